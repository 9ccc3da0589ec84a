//! Any Ethereum JSON-RPC endpoint (a local anvil, a testnet, a chain).
//!
//! Transactions are signed here (legacy, EIP-155) and sent raw, so the
//! endpoint needs no unlocked accounts. Concurrent senders from one account
//! race for nonces; a nonce another sender took is retried with the next.
//! Two identical transactions at one nonce are one to the chain ("already
//! known"), so that answer is retried at the next nonce too: each command's
//! transaction is sent once per nonce, never twice at the same one.

use std::time::{Duration, Instant};

use alloy_primitives::{Address, Bytes, Log, LogData, B256, U256};
use serde_json::{json, Value};

use crate::account::{Account, Transaction};
use crate::chain::{Chain, ChainError, Included};
use crate::hex;

/// How long to wait for a transaction to be included.
const INCLUSION_TIMEOUT: Duration = Duration::from_secs(120);
/// How many times a nonce race is retried.
const NONCE_RETRIES: u32 = 64;
/// The gas limit of a transaction sent at a set time whose gas estimate (made
/// at the latest block's time) reverts.
const TIMED_GAS_LIMIT: u64 = 8_000_000;
/// The most a JSON-RPC answer may hold.
const MAX_ANSWER_BYTES: u64 = 16 << 20;

/// A JSON-RPC endpoint.
pub struct Rpc {
    url: String,
    agent: ureq::Agent,
    chain_id: u64,
    time: Option<u64>,
    next_id: u64,
}

impl Rpc {
    /// Connects to `url` and asks for its chain id.
    pub fn connect(url: &str) -> Result<Rpc, ChainError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut rpc = Rpc {
            url: url.to_string(),
            agent,
            chain_id: 0,
            time: None,
            next_id: 1,
        };
        rpc.chain_id = quantity(&rpc.request("eth_chainId", json!([]))?)?;
        Ok(rpc)
    }

    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    fn request(&mut self, method: &str, params: Value) -> Result<Value, ChainError> {
        let id = self.next_id;
        self.next_id += 1;
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let unreachable = |e: String| ChainError::Node(format!("{}: {method}: {e}", self.url));
        let mut response = self
            .agent
            .post(&self.url)
            .send_json(&body)
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let answer: Value = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_json()
            .map_err(|e| unreachable(format!("HTTP {status}, not a JSON-RPC answer ({e})")))?;
        if let Some(error) = answer.get("error") {
            let message = error["message"]
                .as_str()
                .unwrap_or("no message")
                .to_string();
            // A revert carries the contract's revert data.
            if let Some(data) = error.get("data").and_then(revert_data) {
                return Err(ChainError::Reverted(data));
            }
            if message.contains("revert") {
                return Err(ChainError::Reverted(Vec::new()));
            }
            return Err(unreachable(message));
        }
        answer
            .get("result")
            .cloned()
            .ok_or_else(|| unreachable("an answer with neither result nor error".into()))
    }

    fn call_object(
        &self,
        from: Option<Address>,
        to: Option<Address>,
        value: U256,
        data: &[u8],
    ) -> Value {
        let mut call =
            json!({"value": format!("{value:#x}"), "input": format!("0x{}", hex::encode(data))});
        if let Some(from) = from {
            call["from"] = json!(from.to_string());
        }
        if let Some(to) = to {
            call["to"] = json!(to.to_string());
        }
        call
    }

    /// `eth_call` at the latest block, at the set time when there is one.
    fn dry_run(&mut self, call: Value) -> Result<Vec<u8>, ChainError> {
        let params = match self.time {
            Some(time) => json!([call, "latest", {}, {"time": format!("{time:#x}")}]),
            None => json!([call, "latest"]),
        };
        let out = self.request("eth_call", params)?;
        bytes(&out)
    }

    fn latest_time(&mut self) -> Result<u64, ChainError> {
        let block = self.request("eth_getBlockByNumber", json!(["latest", false]))?;
        quantity(&block["timestamp"])
    }

    fn wait_for(&mut self, hash: &str) -> Result<Value, ChainError> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            let receipt = self.request("eth_getTransactionReceipt", json!([hash]))?;
            if !receipt.is_null() {
                return Ok(receipt);
            }
            if start.elapsed() > INCLUSION_TIMEOUT {
                return Err(ChainError::Node(format!(
                    "transaction {hash} was not included within {} s",
                    INCLUSION_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

impl Chain for Rpc {
    fn set_time(&mut self, now: u64) -> Result<(), ChainError> {
        let latest = self.latest_time()?;
        if now < latest {
            return Err(ChainError::Node(format!(
                "the chain's clock is at {latest}; it does not go back to {now}"
            )));
        }
        self.time = Some(now);
        Ok(())
    }

    fn call(&mut self, to: Address, data: Vec<u8>) -> Result<Vec<u8>, ChainError> {
        let call = self.call_object(None, Some(to), U256::ZERO, &data);
        self.dry_run(call)
    }

    fn send(
        &mut self,
        from: &Account,
        to: Option<Address>,
        value: U256,
        data: Vec<u8>,
    ) -> Result<Included, ChainError> {
        let call = self.call_object(Some(from.address()), to, value, &data);
        // A refused transaction is found before anything is sent.
        self.dry_run(call.clone())?;
        let gas = match (self.request("eth_estimateGas", json!([call])), self.time) {
            (Ok(estimate), _) => {
                let estimate = quantity(&estimate)?;
                estimate + estimate / 4
            }
            // Estimated at the latest block's time, a transaction that needs the
            // set time (a finalize after the window) fails; the dry run at that
            // time passed.
            (Err(ChainError::Reverted(_)), Some(_)) => TIMED_GAS_LIMIT,
            (Err(e), _) => return Err(e),
        };
        let mut attempt = 0;
        let hash = loop {
            let nonce = quantity(&self.request(
                "eth_getTransactionCount",
                json!([from.address().to_string(), "pending"]),
            )?)?;
            let gas_price = quantity(&self.request("eth_gasPrice", json!([]))?)? as u128;
            let tx = Transaction {
                nonce,
                gas_price,
                gas,
                to,
                value,
                data: data.clone(),
            };
            let raw = from.sign_transaction(&tx, self.chain_id);
            if let Some(time) = self.time {
                self.request("evm_setNextBlockTimestamp", json!([time]))
                    .map_err(|e| ChainError::Node(format!("setting the block time ({e}); a public chain keeps its own clock: drop --now")))?;
            }
            match self.request(
                "eth_sendRawTransaction",
                json!([format!("0x{}", hex::encode(&raw))]),
            ) {
                Ok(hash) => break hash.as_str().unwrap_or_default().to_string(),
                Err(ChainError::Node(message))
                    if nonce_race(&message) && attempt < NONCE_RETRIES =>
                {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(5 * u64::from(attempt)));
                }
                Err(e) => return Err(e),
            }
        };
        let receipt = self.wait_for(&hash)?;
        if quantity(&receipt["status"])? != 1 {
            // Replayed read-only for the contract's reason.
            return Err(match self.dry_run(call) {
                Err(e @ ChainError::Reverted(_)) => e,
                _ => ChainError::Reverted(Vec::new()),
            });
        }
        let created = match &receipt["contractAddress"] {
            Value::String(a) => Some(a.parse().map_err(|_| malformed("contractAddress"))?),
            _ => None,
        };
        let logs = receipt["logs"]
            .as_array()
            .ok_or_else(|| malformed("logs"))?
            .iter()
            .map(log)
            .collect::<Result<_, _>>()?;
        Ok(Included {
            gas_used: quantity(&receipt["gasUsed"])?,
            created,
            logs,
        })
    }

    fn balance(&mut self, account: Address) -> Result<U256, ChainError> {
        let out = self.request("eth_getBalance", json!([account.to_string(), "latest"]))?;
        out.as_str()
            .and_then(|s| U256::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .ok_or_else(|| malformed("balance"))
    }
}

fn nonce_race(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("nonce")
        || m.contains("already known")
        || m.contains("already imported")
        || m.contains("underpriced")
}

fn revert_data(data: &Value) -> Option<Vec<u8>> {
    match data {
        Value::String(s) => hex::decode(s),
        Value::Object(o) => o.get("data").and_then(revert_data),
        _ => None,
    }
}

fn malformed(field: &str) -> ChainError {
    ChainError::Node(format!("the endpoint answered a malformed {field}"))
}

fn quantity(value: &Value) -> Result<u64, ChainError> {
    value
        .as_str()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .ok_or_else(|| malformed("quantity"))
}

fn bytes(value: &Value) -> Result<Vec<u8>, ChainError> {
    value
        .as_str()
        .and_then(hex::decode)
        .ok_or_else(|| malformed("data"))
}

fn log(value: &Value) -> Result<Log, ChainError> {
    let address: Address = value["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| malformed("log address"))?;
    let topics = value["topics"]
        .as_array()
        .ok_or_else(|| malformed("log topics"))?
        .iter()
        .map(|t| t.as_str().and_then(|t| t.parse::<B256>().ok()))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| malformed("log topic"))?;
    let data = Bytes::from(bytes(&value["data"])?);
    let data = LogData::new(topics, data).ok_or_else(|| malformed("log"))?;
    Ok(Log { address, data })
}
