//! Ethereum accounts: a secp256k1 key, its address, and legacy (EIP-155)
//! transaction signing for JSON-RPC endpoints.

use alloy_primitives::{keccak256, Address, U256};
use k256::ecdsa::SigningKey;

use crate::hex;

/// The ten development accounts that anvil and hardhat fund at start (their
/// mnemonic "test test … junk"); the embedded chain funds the same ones, so a
/// test runs unchanged on either. Never use them on a public chain.
const DEV_KEYS: [&str; 10] = [
    "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "dbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
];

/// How many development accounts there are (`dev:0` to `dev:9`).
pub const DEV_ACCOUNTS: usize = DEV_KEYS.len();

/// An account that signs transactions.
#[derive(Clone)]
pub struct Account {
    key: SigningKey,
    address: Address,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        write!(f, "Account({})", self.address)
    }
}

impl Account {
    /// Development account `index` (0 to 9).
    pub fn dev(index: usize) -> Option<Account> {
        DEV_KEYS
            .get(index)
            .map(|k| Account::from_hex(k).expect("a valid dev key"))
    }

    /// A secret key as 64 hex digits (with or without `0x`).
    pub fn from_hex(text: &str) -> Option<Account> {
        let bytes = hex::decode(text.trim())?;
        let key = SigningKey::from_slice(&bytes)
            .ok()
            .filter(|_| bytes.len() == 32)?;
        let point = key.verifying_key().to_encoded_point(false);
        let address = Address::from_slice(&keccak256(&point.as_bytes()[1..])[12..]);
        Some(Account { key, address })
    }

    pub fn address(&self) -> Address {
        self.address
    }

    /// A signed legacy transaction with EIP-155 replay protection, ready for
    /// `eth_sendRawTransaction`.
    pub fn sign_transaction(&self, tx: &Transaction, chain_id: u64) -> Vec<u8> {
        let unsigned = tx.rlp(chain_id, U256::ZERO, U256::ZERO);
        let (signature, recovery) = self
            .key
            .sign_prehash_recoverable(keccak256(&unsigned).as_slice())
            .expect("signing a 32-byte digest");
        let (r, s) = signature.split_bytes();
        let v = chain_id * 2 + 35 + u64::from(recovery.is_y_odd());
        tx.rlp(
            v,
            U256::from_be_slice(r.as_slice()),
            U256::from_be_slice(s.as_slice()),
        )
    }
}

/// A transaction's fields (legacy form).
#[derive(Clone, Debug)]
pub struct Transaction {
    pub nonce: u64,
    pub gas_price: u128,
    pub gas: u64,
    /// `None` creates a contract.
    pub to: Option<Address>,
    pub value: U256,
    pub data: Vec<u8>,
}

impl Transaction {
    fn rlp(&self, v: u64, r: U256, s: U256) -> Vec<u8> {
        use alloy_rlp::Encodable;
        let to: &[u8] = match &self.to {
            Some(to) => to.as_slice(),
            None => &[],
        };
        let fields: [&dyn Encodable; 9] = [
            &self.nonce,
            &self.gas_price,
            &self.gas,
            &to,
            &self.value,
            &self.data.as_slice(),
            &v,
            &r,
            &s,
        ];
        let length: usize = fields.iter().map(|f| f.length()).sum();
        let mut out = Vec::with_capacity(length + 9);
        alloy_rlp::Header {
            list: true,
            payload_length: length,
        }
        .encode(&mut out);
        for field in fields {
            field.encode(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_accounts_have_their_well_known_addresses() {
        let first = Account::dev(0).expect("dev 0");
        assert_eq!(
            first.address().to_string(),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        );
        assert!(Account::dev(DEV_ACCOUNTS).is_none());
        assert_eq!(
            format!("{first:?}"),
            format!("Account({})", first.address())
        );
    }

    #[test]
    fn keys_that_are_not_32_bytes_of_hex_are_refused() {
        for bad in [
            "",
            "00",
            &"00".repeat(32),
            &"ff".repeat(32),
            &"1".repeat(63),
            "zz",
        ] {
            assert!(Account::from_hex(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_signed_transaction_recovers_to_its_sender() {
        use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
        let account = Account::dev(3).expect("dev 3");
        let tx = Transaction {
            nonce: 7,
            gas_price: 1_000_000_000,
            gas: 21_000,
            to: Some(Address::repeat_byte(0x11)),
            value: U256::from(5),
            data: vec![1, 2, 3],
        };
        let raw = account.sign_transaction(&tx, 31337);
        let fields: Vec<alloy_primitives::Bytes> = decode_list(&raw);
        let v = u64::from_be_bytes(left_pad(&fields[6]));
        let (r, s) = (left_pad::<32>(&fields[7]), left_pad::<32>(&fields[8]));
        let mut rs = [0u8; 64];
        rs[..32].copy_from_slice(&r);
        rs[32..].copy_from_slice(&s);
        let signature = Signature::from_slice(&rs).expect("r and s");
        let recovery = RecoveryId::from_byte((v - 31337 * 2 - 35) as u8).expect("v");
        let unsigned = tx.rlp(31337, U256::ZERO, U256::ZERO);
        let key = VerifyingKey::recover_from_prehash(
            keccak256(&unsigned).as_slice(),
            &signature,
            recovery,
        )
        .expect("recovers");
        let point = key.to_encoded_point(false);
        assert_eq!(
            Address::from_slice(&keccak256(&point.as_bytes()[1..])[12..]),
            account.address()
        );
    }

    fn decode_list(raw: &[u8]) -> Vec<alloy_primitives::Bytes> {
        use alloy_rlp::Decodable;
        let mut buf = raw;
        let header = alloy_rlp::Header::decode(&mut buf).expect("list");
        assert!(header.list);
        let mut fields = Vec::new();
        while !buf.is_empty() {
            fields.push(alloy_primitives::Bytes::decode(&mut buf).expect("field"));
        }
        fields
    }

    fn left_pad<const N: usize>(bytes: &[u8]) -> [u8; N] {
        let mut out = [0u8; N];
        out[N - bytes.len()..].copy_from_slice(bytes);
        out
    }
}
