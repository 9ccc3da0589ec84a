//! Fixed-point arithmetic shared by the circuit, the prover and the verifier.
//!
//! Logits are integers `z = round(logit * 2^F)`. Exponentials are integers
//! `T[u] = round(2^Q * exp(-u / 2^F))`. Both tables below are computed with
//! integer arithmetic only, so that every machine derives bit-identical tables
//! (they are fixed columns: a different table is a different verifying key).

/// Bits of the exp table index: the table has `2^TABLE_BITS` rows.
pub const TABLE_BITS: u32 = 16;
/// Rows of every lookup table.
pub const TABLE_ROWS: usize = 1 << TABLE_BITS;
/// Width of the "small" table column (values `0..2^SMALL_BITS`).
pub const SMALL_BITS: u32 = 9;
/// Logits must satisfy `|z| < 2^LOGIT_BITS`.
pub const LOGIT_BITS: u32 = 23;
/// Temperature is `tau = 2^TEMP_SHIFT / beta` for an integer `beta`.
pub const TEMP_SHIFT: u32 = 9;
/// `beta` for temperature 1 (and for greedy decoding).
pub const BETA_ONE: u32 = 1 << TEMP_SHIFT;
/// The sampling randomness `r` is uniform in `[0, 2^R_BITS)`.
pub const R_BITS: u32 = 64;

/// The fixed-point format of a decode step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FixedPoint {
    /// `F`: logits are scaled by `2^F`.
    pub frac_bits: u32,
    /// `Q`: exp table values are scaled by `2^Q`.
    pub exp_bits: u32,
}

impl Default for FixedPoint {
    fn default() -> Self {
        FixedPoint {
            frac_bits: 11,
            exp_bits: 30,
        }
    }
}

/// A logit that cannot be represented in the fixed-point format.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("logit {value} at vocabulary index {index} is out of range: |logit * 2^{frac_bits}| must be below 2^{LOGIT_BITS} (and finite)")]
pub struct OutOfRange {
    pub index: usize,
    pub value: f64,
    pub frac_bits: u32,
}

impl FixedPoint {
    /// Checks that the format is one the circuit supports.
    pub fn validate(&self) -> Result<(), String> {
        // F <= 12 keeps delta = ln(S / 2^Q) * 2^F inside the 2^16-row table up to V = 2^20.
        if !(4..=12).contains(&self.frac_bits) {
            return Err(format!(
                "frac_bits F = {} must be in 4..=12",
                self.frac_bits
            ));
        }
        if !(16..=34).contains(&self.exp_bits) {
            return Err(format!("exp_bits Q = {} must be in 16..=34", self.exp_bits));
        }
        Ok(())
    }

    /// The fixed-point unit in nats, `2^-F`.
    pub fn unit(&self) -> f64 {
        (-(self.frac_bits as f64)).exp2()
    }

    /// `round(logit * 2^F)`, or an error naming the index and value.
    pub fn quantize(&self, index: usize, logit: f64) -> Result<i64, OutOfRange> {
        let scaled = (logit * (self.frac_bits as f64).exp2()).round();
        if !scaled.is_finite() || scaled.abs() >= (LOGIT_BITS as f64).exp2() {
            return Err(OutOfRange {
                index,
                value: logit,
                frac_bits: self.frac_bits,
            });
        }
        Ok(scaled as i64)
    }

    /// [`FixedPoint::quantize`] of every logit of a row, or the first out of range.
    pub fn quantize_all(&self, logits: &[f32]) -> Result<Vec<i64>, OutOfRange> {
        logits
            .iter()
            .enumerate()
            .map(|(index, &l)| self.quantize(index, l as f64))
            .collect()
    }

    /// `T[u] = round(2^Q * exp(-u / 2^F))` for `u` in `0..TABLE_ROWS`.
    pub fn exp_table(&self) -> Vec<u64> {
        let step = exp_fixed(self.frac_bits + 1, false); // exp(-1/2^(F+1)) in 2^-64 units
        let step = mul_q64(step, step); // exp(-1/2^F)
        let mut acc: u128 = 1 << 64;
        (0..TABLE_ROWS)
            .map(|_| {
                let value = round_q64(acc << self.exp_bits);
                acc = mul_q64(acc, step);
                value as u64
            })
            .collect()
    }

    /// `G[d] = ceil(2^Q * exp((d - 1/2) / 2^F))` for `d` in `0..=TABLE_ROWS`.
    ///
    /// The statement picks `delta` with `G[delta] <= S < G[delta + 1]`, so
    /// `delta / 2^F` is `ln(S / 2^Q)` rounded to the nearest unit.
    pub fn lse_table(&self) -> Vec<u128> {
        let half = exp_fixed(self.frac_bits + 1, true); // exp(+1/2^(F+1))
        let step = mul_q64(half, half);
        let inv_half = exp_fixed(self.frac_bits + 1, false);
        let mut acc: u128 = inv_half; // exp(-1/2^(F+1)) in 2^-64 units
        (0..=TABLE_ROWS)
            .map(|_| {
                let value = ceil_q64_scaled(acc, self.exp_bits);
                acc = mul_q64(acc, step);
                value
            })
            .collect()
    }

    /// The proven bound on |lp - exact log-softmax| in nats for vocabulary `vocab`.
    ///
    /// Let `S* = 2^Q * sum_i exp(-w_i / 2^F)` and `S = sum_i T[w_i]` (entries
    /// past the table are 0 where the real value is below `2^Q * e^-32 / 2^F`).
    /// Each table entry is within `1/2 + 2^-17` of its real value, so
    /// `|S - S*| <= V * (1/2 + 2^-17)`. The circuit proves
    /// `G[delta] <= S < G[delta + 1]`, hence `|delta / 2^F - ln(S / 2^Q)| <= 2^-(F+1)`
    /// (plus the table's own rounding, below `2^-Q`), and `S >= G[0] ~ 2^Q`, hence
    /// `|ln S - ln S*| <= V (1/2 + 2^-17) / (G[0] - V)`. The token's own term
    /// `w_y` is exact. So
    /// `|lp - exact| <= 2^-(F+1) + 2^-Q + V (1/2 + 2^-17) / (G[0] - V)`.
    pub fn logprob_error_bound(&self, vocab: usize) -> f64 {
        let q = (self.exp_bits as f64).exp2();
        let g0 = q * (-(self.unit() / 2.0)).exp();
        let v = vocab as f64;
        0.5 * self.unit() + 1.0 / q + v * (0.5 + 2f64.powi(-17)) / (g0 - v)
    }
}

/// exp(+-2^-bits) in 2^-64 units by its Taylor series, with integer arithmetic.
fn exp_fixed(bits: u32, positive: bool) -> u128 {
    let one: u128 = 1 << 64;
    let x: u128 = one >> bits;
    let mut term = one;
    let mut sum = one;
    let mut n = 1u128;
    loop {
        term = mul_q64(term, x) / n;
        if term == 0 {
            break;
        }
        if positive || n.is_multiple_of(2) {
            sum += term;
        } else {
            sum -= term;
        }
        n += 1;
    }
    sum
}

/// (a * b) >> 64 without overflow for a, b < 2^127.
fn mul_q64(a: u128, b: u128) -> u128 {
    let (a_hi, a_lo) = (a >> 64, a & u64::MAX as u128);
    let (b_hi, b_lo) = (b >> 64, b & u64::MAX as u128);
    ((a_hi * b_hi) << 64) + a_hi * b_lo + a_lo * b_hi + ((a_lo * b_lo) >> 64)
}

fn round_q64(x: u128) -> u128 {
    (x + (1 << 63)) >> 64
}

/// ceil(x * 2^shift / 2^64).
fn ceil_q64_scaled(x: u128, shift: u32) -> u128 {
    let int = x >> (64 - shift);
    let frac_mask = (1u128 << (64 - shift)) - 1;
    int + u128::from(x & frac_mask != 0)
}

/// `beta = round(2^TEMP_SHIFT / temperature)`: the integer temperature the circuit uses.
pub fn temperature_to_beta(temperature: f64) -> Result<u32, String> {
    if !temperature.is_finite() || temperature <= 0.0 {
        return Err(format!(
            "temperature {temperature} must be a positive number"
        ));
    }
    let beta = (BETA_ONE as f64 / temperature).round();
    if !(1.0..=65_535.0).contains(&beta) {
        return Err(format!(
            "temperature {temperature} is outside the supported range [{:.4}, {}]",
            BETA_ONE as f64 / 65_535.0,
            BETA_ONE
        ));
    }
    Ok(beta as u32)
}

/// The temperature a `beta` stands for.
pub fn beta_to_temperature(beta: u32) -> f64 {
    BETA_ONE as f64 / beta as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_table_matches_float_exp() {
        let fp = FixedPoint::default();
        let table = fp.exp_table();
        assert_eq!(table[0], 1 << fp.exp_bits);
        for u in [1usize, 7, 2048, 10_000, 40_000, 65_535] {
            let exact = (fp.exp_bits as f64).exp2() * (-(u as f64) * fp.unit()).exp();
            assert!((table[u] as f64 - exact).abs() <= 0.5 + 1e-3, "u={u}");
        }
        assert!(table.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn lse_table_brackets_half_steps() {
        let fp = FixedPoint::default();
        let g = fp.lse_table();
        for d in [0usize, 1, 100, 25_000, 65_536] {
            let exact = (fp.exp_bits as f64).exp2() * ((d as f64 - 0.5) * fp.unit()).exp();
            assert!((g[d] as f64 - exact).abs() / exact < 1e-9, "d={d}");
        }
        assert!(g.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn quantize_rejects_out_of_range() {
        let fp = FixedPoint::default();
        assert_eq!(fp.quantize(0, 1.0).unwrap(), 2048);
        let err = fp.quantize(42, 5000.0).unwrap_err();
        assert_eq!(err.index, 42);
        assert!(fp.quantize(1, f64::NAN).is_err());
    }

    #[test]
    fn temperatures() {
        assert_eq!(temperature_to_beta(1.0).unwrap(), 512);
        assert_eq!(temperature_to_beta(0.7).unwrap(), 731);
        assert!(temperature_to_beta(0.0).is_err());
        assert!(temperature_to_beta(1e-4).is_err());
    }
}
