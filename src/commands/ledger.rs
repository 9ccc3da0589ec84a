//! `zkinfer ledger`: stakes, pending results and their challenge windows in a
//! ledger file (the `ledger` crate; rules in docs/ledger.md).
//!
//! A challenge's fraud proof is checked by re-execution (`zkinfer verify
//! --fraud-proof` does the same) before the ledger slashes anyone.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use ::ledger::{Ledger, LedgerError, Params, ResultId, ResultState};
use serde_json::json;

use audit::fraud::FraudProof;

use super::CliError;
use crate::cli::{LedgerArgs, LedgerCommand};

pub fn run(args: LedgerArgs) -> Result<ExitCode, CliError> {
    let now = match args.now {
        Some(now) => now,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| CliError::failed(format!("the system clock is before 1970: {e}")))?
            .as_secs(),
    };
    if let LedgerCommand::Init {
        window_s,
        slash,
        bond,
        min_stake,
    } = args.command
    {
        if args.file.exists() {
            return Err(CliError::failed(format!(
                "{} exists; init never overwrites a ledger",
                args.file.display()
            )));
        }
        let params = Params {
            challenge_window_s: window_s,
            slash_amount: slash,
            challenge_bond: bond,
            min_stake,
        };
        Ledger::new(&args.file, params).save().map_err(error)?;
        println!("{}", json!({ "params": params }));
        return Ok(ExitCode::SUCCESS);
    }
    let mut ledger = Ledger::open(&args.file).map_err(error)?;
    match args.command {
        LedgerCommand::Init { .. } => unreachable!("handled above"),
        LedgerCommand::Deposit { account, amount } => {
            let balance = ledger.deposit(&account, amount, now).map_err(error)?;
            println!("{balance}");
        }
        LedgerCommand::Withdraw { account, amount } => {
            let balance = ledger.withdraw(&account, amount, now).map_err(error)?;
            println!("{balance}");
        }
        LedgerCommand::Submit { id, nodes } => {
            let deadline = ledger.submit(ResultId(id), nodes, now).map_err(error)?;
            println!("{deadline}");
        }
        LedgerCommand::Challenge {
            id,
            challenger,
            fraud_proof,
            model,
        } => {
            let proof = super::verify::read_fraud_proof(&fraud_proof)?;
            let model = model.unwrap_or_else(super::model::packaged_model_path);
            let mut replayer = super::audit::open_replayer(&model)?;
            let check = |proof: &FraudProof| {
                let verdict = proof.check(&mut replayer).map_err(|e| e.to_string())?;
                if verdict.valid {
                    Ok(proof.signer.clone())
                } else {
                    Err(verdict.reason)
                }
            };
            let outcome = ledger
                .challenge(&ResultId(id), &challenger, &proof, check, now)
                .map_err(error)?;
            println!("{}", json!({ "outcome": outcome }));
        }
        LedgerCommand::Finalize => {
            for id in ledger.finalize(now) {
                println!("{id}");
            }
        }
        LedgerCommand::Show { json } => {
            show(&ledger, json);
            return Ok(ExitCode::SUCCESS);
        }
    }
    ledger.save().map_err(error)?;
    Ok(ExitCode::SUCCESS)
}

fn show(ledger: &Ledger, json: bool) {
    if json {
        let out = json!({
            "params": ledger.params(),
            "balances": ledger.balances(),
            "burned": ledger.burned(),
            "results": ledger.results(),
            "events": ledger.events(),
        });
        println!("{out}");
        return;
    }
    let p = ledger.params();
    println!(
        "rules:    window {} s, slash {}, bond {}, min stake {}",
        p.challenge_window_s, p.slash_amount, p.challenge_bond, p.min_stake
    );
    println!("burned:   {}", ledger.burned());
    println!("balances: {}", ledger.balances().len());
    for (account, balance) in ledger.balances() {
        match ledger.locked_until(account) {
            Some(until) => println!("  {account} {balance} (locked until {until})"),
            None => println!("  {account} {balance}"),
        }
    }
    println!("results:  {}", ledger.results().len());
    for (id, s) in ledger.results() {
        let state = match &s.state {
            ResultState::Pending { challenge_deadline } => {
                format!("pending until {challenge_deadline}")
            }
            ResultState::Final { at } => format!("final at {at}"),
            ResultState::Slashed {
                node,
                challenger,
                at,
            } => format!("slashed at {at}: node {node}, challenger {challenger}"),
        };
        println!("  {id} {state} (nodes {})", s.nodes.join(", "));
    }
}

/// A file that cannot be read is unreadable input (exit 2); anything else a refusal (exit 1).
fn error(e: LedgerError) -> CliError {
    match e {
        LedgerError::Read { .. } | LedgerError::Corrupt { .. } | LedgerError::Version { .. } => {
            CliError::unreadable(e.to_string())
        }
        other => CliError::failed(other.to_string()),
    }
}
