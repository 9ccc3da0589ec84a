//! `zkinfer ledger`: the stake ledger contract (the `ledger` crate; rules in
//! docs/ledger.md), in an EVM in this process or on a JSON-RPC endpoint.

use std::path::Path;
use std::process::ExitCode;

use ::ledger::{
    printable, Account, Address, Chain, Embedded, Equivocation, Ledger, LedgerError, Params,
    ResultId, ResultState, Rpc, SignedVerdict, Snapshot, DEV_ACCOUNTS,
};
use serde_json::json;
use verifier::receipt::PublicKey;

use super::CliError;
use crate::cli::{ChallengeCommand, LedgerArgs, LedgerCommand};

pub fn run(args: LedgerArgs) -> Result<ExitCode, CliError> {
    let from = sender(&args.from)?;
    if let LedgerCommand::Account = args.command {
        println!("{}", from.address());
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(now) = args.now {
        check_time(now)?;
    }
    match (args.state.clone(), args.rpc.clone()) {
        (state, None) => on_embedded(&state.unwrap_or_else(|| "ledger.json".into()), &from, args),
        (None, Some(url)) => on_rpc(&url, &from, args),
        (Some(_), Some(_)) => unreachable!("clap refuses --state with --rpc"),
    }
}

/// The embedded EVM: the contract's address is kept in its state file.
fn on_embedded(state: &Path, from: &Account, args: LedgerArgs) -> Result<ExitCode, CliError> {
    let mut chain = Embedded::open(state).map_err(|e| CliError::unreadable(e.to_string()))?;
    if let Some(now) = args.now {
        chain.set_time(now).map_err(chain_error)?;
    }
    if let LedgerCommand::Init { .. } = args.command {
        if let Some(existing) = chain.contract() {
            return Err(CliError::failed(format!(
                "{} already holds the ledger at {existing}; init never replaces one",
                state.display()
            )));
        }
        let ledger = init(chain, from, &args.command)?;
        let address = ledger.address();
        ledger
            .into_chain()
            .set_contract(address)
            .map_err(chain_error)?;
        return Ok(ExitCode::SUCCESS);
    }
    let address = chain.contract().ok_or_else(|| {
        CliError::failed(format!(
            "{} holds no ledger yet: run `zkinfer ledger --state {} init` first",
            state.display(),
            state.display()
        ))
    })?;
    let ledger = Ledger::at(chain, address).map_err(error)?;
    operate(ledger, from, args.command)
}

/// A JSON-RPC endpoint: the contract's address comes with --contract.
fn on_rpc(url: &str, from: &Account, args: LedgerArgs) -> Result<ExitCode, CliError> {
    let mut chain = Rpc::connect(url).map_err(chain_error)?;
    if let Some(now) = args.now {
        chain.set_time(now).map_err(chain_error)?;
    }
    if let LedgerCommand::Init { .. } = args.command {
        init(chain, from, &args.command)?;
        return Ok(ExitCode::SUCCESS);
    }
    let contract = args.contract.as_deref().ok_or_else(|| {
        CliError::unreadable("name the ledger contract with --contract ADDRESS (`init` printed it)")
    })?;
    let ledger = Ledger::at(chain, parse_address(contract, "--contract")?).map_err(error)?;
    operate(ledger, from, args.command)
}

fn init<C: Chain>(
    chain: C,
    from: &Account,
    command: &LedgerCommand,
) -> Result<Ledger<C>, CliError> {
    let LedgerCommand::Init {
        window_s,
        slash,
        bond,
        min_stake,
        threshold,
    } = *command
    else {
        unreachable!("called for init only")
    };
    let params = Params {
        challenge_window_s: window_s,
        slash_amount: slash,
        challenge_bond: bond,
        min_stake,
        committee_threshold: threshold,
    };
    let ledger = Ledger::deploy(chain, from, params).map_err(error)?;
    report_gas(&ledger);
    println!(
        "{}",
        json!({ "contract": ledger.address(), "params": params })
    );
    Ok(ledger)
}

fn operate<C: Chain>(
    mut ledger: Ledger<C>,
    from: &Account,
    command: LedgerCommand,
) -> Result<ExitCode, CliError> {
    match command {
        LedgerCommand::Init { .. } | LedgerCommand::Account => unreachable!("handled by run"),
        LedgerCommand::Register { key } => {
            let key = super::keys::read_secret(&key)?;
            ledger.register(from, &key).map_err(error)?;
            report_gas(&ledger);
            println!("{} {}", from.address(), key.public().to_hex());
        }
        LedgerCommand::Deposit { amount } => {
            let stake = ledger.deposit(from, amount).map_err(error)?;
            report_gas(&ledger);
            println!("{stake}");
        }
        LedgerCommand::Withdraw { amount } => {
            let stake = ledger.withdraw(from, amount).map_err(error)?;
            report_gas(&ledger);
            println!("{stake}");
        }
        LedgerCommand::Submit { id, nodes } => {
            let id = ResultId::parse(&id).map_err(error)?;
            let mut addresses = Vec::with_capacity(nodes.len());
            for node in &nodes {
                addresses.push(node_address(&mut ledger, node)?);
            }
            let deadline = ledger.submit(from, id, &addresses).map_err(error)?;
            report_gas(&ledger);
            println!("{deadline}");
        }
        LedgerCommand::Challenge(ChallengeCommand::Equivocation {
            evidence,
            unchecked,
        }) => {
            let evidence = Equivocation::parse(&read_evidence(&evidence)?)
                .map_err(|e| CliError::unreadable(format!("{}: {e}", evidence.display())))?;
            if let (Err(flaw), false) = (evidence.check(), unchecked) {
                return Err(would_burn(&flaw));
            }
            let outcome = ledger
                .challenge_equivocation(from, &evidence)
                .map_err(error)?;
            report_gas(&ledger);
            println!("{}", json!(outcome));
        }
        LedgerCommand::Challenge(ChallengeCommand::Committee {
            id,
            verdicts,
            unchecked,
        }) => {
            let id = ResultId::parse(&id).map_err(error)?;
            let verdicts = verdicts
                .iter()
                .map(|path| {
                    SignedVerdict::parse(&read_evidence(path)?)
                        .map_err(|e| CliError::unreadable(format!("{}: {e}", path.display())))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !unchecked {
                let threshold = ledger.params().map_err(error)?.committee_threshold as usize;
                if let Some(bad) = verdicts.iter().position(|v| !v.verifies()) {
                    return Err(would_burn(&format!(
                        "the signature of verdict {} does not verify",
                        bad + 1
                    )));
                }
                if verdicts.len() < threshold {
                    return Err(would_burn(&format!(
                        "{} verdicts, fewer than the committee threshold of {threshold}",
                        verdicts.len()
                    )));
                }
            }
            let outcome = ledger
                .challenge_committee(from, id, &verdicts)
                .map_err(error)?;
            report_gas(&ledger);
            println!("{}", json!(outcome));
        }
        LedgerCommand::Finalize => {
            for id in ledger.finalize(from).map_err(error)? {
                println!("{id}");
            }
            report_gas(&ledger);
        }
        LedgerCommand::Show { json } => {
            let snapshot = ledger.snapshot().map_err(error)?;
            if json {
                println!("{}", json!(snapshot));
            } else {
                show(&snapshot);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(s: &Snapshot) {
    let p = &s.params;
    println!("contract: {}", s.contract);
    println!(
        "rules:    window {} s, slash {}, bond {}, min stake {}, committee of {}",
        p.challenge_window_s, p.slash_amount, p.challenge_bond, p.min_stake, p.committee_threshold
    );
    println!("burned:   {}", s.burned);
    println!("accounts: {}", s.accounts.len());
    for a in &s.accounts {
        let key = a
            .key
            .as_deref()
            .map(|k| format!(" key {}…", &k[..16]))
            .unwrap_or_default();
        match a.locked_until {
            Some(until) => println!("  {} {}{key} (locked until {until})", a.address, a.balance),
            None => println!("  {} {}{key}", a.address, a.balance),
        }
    }
    println!("results:  {}", s.results.len());
    for r in &s.results {
        let state = match &r.state {
            ResultState::Pending { challenge_deadline } => {
                format!("pending until {challenge_deadline}")
            }
            ResultState::Final { at } => format!("final at {at}"),
            ResultState::Slashed {
                node,
                challenger,
                at,
            } => {
                format!("slashed at {at}: node {node}, challenger {challenger}")
            }
        };
        let nodes: Vec<String> = r.nodes.iter().map(ToString::to_string).collect();
        println!("  {} {state} (nodes {})", r.id, nodes.join(", "));
    }
}

/// Evidence that fails the local check is not sent: it would only cost the bond.
fn would_burn(flaw: &str) -> CliError {
    CliError::failed(format!(
        "the evidence does not hold ({flaw}); sent, it would cost the bond (--unchecked sends it anyway)"
    ))
}

/// `dev:N`, or a file holding a hex secret key.
fn sender(text: &str) -> Result<Account, CliError> {
    if let Some(index) = text.strip_prefix("dev:") {
        return index
            .parse::<usize>()
            .ok()
            .and_then(Account::dev)
            .ok_or_else(|| {
                CliError::unreadable(format!(
                    "--from {}: development accounts are dev:0 to dev:{}",
                    printable(text),
                    DEV_ACCOUNTS - 1
                ))
            });
    }
    let path = Path::new(text);
    let key = std::fs::read(path)
        .ok()
        .filter(|bytes| bytes.len() <= 256)
        .ok_or_else(|| {
            CliError::unreadable(format!("--from {}: no key file there", printable(text)))
        })?;
    Account::from_hex(&String::from_utf8_lossy(&key)).ok_or_else(|| {
        CliError::unreadable(format!(
            "--from {}: not a 64-hex-digit secp256k1 secret key",
            path.display()
        ))
    })
}

/// An address, or a registered node's BLS public key.
fn node_address<C: Chain>(ledger: &mut Ledger<C>, text: &str) -> Result<Address, CliError> {
    if let Ok(key) = PublicKey::from_hex(text) {
        return ledger.node_of_key(&key).map_err(error)?.ok_or_else(|| {
            CliError::failed(format!("key {}… is registered to no account", &text[..16]))
        });
    }
    parse_address(text, "node")
}

fn parse_address(text: &str, what: &str) -> Result<Address, CliError> {
    let hex = text.strip_prefix("0x").filter(|h| h.len() == 40);
    hex.and_then(|_| text.parse().ok()).ok_or_else(|| {
        CliError::unreadable(format!(
            "{what} {:?}: not an address (0x and 40 hex digits) or a BLS public key (128 hex digits)",
            printable(text)
        ))
    })
}

fn read_evidence(path: &Path) -> Result<Vec<u8>, CliError> {
    let limit = ::ledger::MAX_EVIDENCE_BYTES as u64;
    match std::fs::metadata(path) {
        Ok(m) if m.len() > limit => {
            return Err(CliError::unreadable(format!(
                "{}: larger than the {limit}-byte limit for evidence",
                path.display()
            )))
        }
        Ok(_) => {}
        Err(e) => {
            return Err(CliError::unreadable(format!(
                "reading {}: {e}",
                path.display()
            )))
        }
    }
    std::fs::read(path)
        .map_err(|e| CliError::unreadable(format!("reading {}: {e}", path.display())))
}

fn check_time(now: u64) -> Result<(), CliError> {
    if now > ::ledger::MAX_TIME {
        return Err(CliError::unreadable(format!(
            "--now {now}: past the year 9999 ({})",
            ::ledger::MAX_TIME
        )));
    }
    Ok(())
}

fn report_gas<C: Chain>(ledger: &Ledger<C>) {
    eprintln!("gas used: {}", ledger.last_gas());
}

fn chain_error(e: ::ledger::ChainError) -> CliError {
    error(e.into())
}

/// Bad input and unreadable state are exit 2; a refusal or an unreachable chain exit 1.
fn error(e: LedgerError) -> CliError {
    match e {
        LedgerError::Invalid(_) => CliError::unreadable(e.to_string()),
        other => CliError::failed(other.to_string()),
    }
}

/// The auditor's side of committee slashing: a fraud proof by `proof_signer`
/// holds (the caller re-executed it), so sign the verdict against that node.
pub fn sign_verdict(
    proof_signer: &str,
    key_path: &Path,
    ledger: &str,
    result: &str,
    out: &Path,
) -> Result<(), CliError> {
    let key = super::keys::read_secret(key_path)?;
    let accused = PublicKey::from_hex(proof_signer)
        .map_err(|e| CliError::unreadable(format!("the fraud proof's signer: {e}")))?;
    let ledger = parse_address(ledger, "--ledger")?;
    let result = ResultId::parse(result).map_err(error)?;
    let verdict = SignedVerdict::sign(&key, ledger.0 .0, result.0, accused);
    super::output::write_atomic(out, verdict.to_json().as_bytes())
        .map_err(|e| CliError::failed(format!("writing {}: {e}", out.display())))
}
