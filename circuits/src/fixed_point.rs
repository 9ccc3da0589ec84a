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
/// Width of the top limb of some range checks.
pub const SMALL_BITS: u32 = 9;
/// Width of the high limb of a distance from the maximum: distances are below
/// `2^(TABLE_BITS + HIGH_LIMB_BITS) = 2^24`, which every pair of logits with
/// `|z| < 2^LOGIT_BITS` satisfies.
pub const HIGH_LIMB_BITS: u32 = 8;
/// Logits must satisfy `|z| < 2^LOGIT_BITS`.
pub const LOGIT_BITS: u32 = 23;
/// Temperatures are exact multiples of `1 / TEMPERATURE_SCALE`.
pub const TEMPERATURE_SCALE: u32 = 1000;
/// The highest temperature: above it the exponentials of distances past
/// `2^(TABLE_BITS + 1)` would no longer round to 0 (see [`FixedPoint::exp_table`]).
pub const MAX_TEMPERATURE: u32 = 2 * TEMPERATURE_SCALE;
/// Log-probabilities are in units of `2^-(F + LOGPROB_EXTRA_BITS)` nats: finer
/// than the logits, so that the tempered token term `u_y / tau` rounds by at
/// most `2^-(F + 4)`.
pub const LOGPROB_EXTRA_BITS: u32 = 4;
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

/// Below this magnitude an f64 converts to i64 and back exactly truncated.
const TRUNCATES_EXACTLY: f64 = (1u64 << 52) as f64;

/// `x.round()` (half away from zero) if it is below `2^LOGIT_BITS` in
/// magnitude, else `None` (NaN and infinities included). Rounds through an
/// i64 truncation, whose fraction `x - trunc(x)` is exact below 2^52, and
/// without branches on the fraction: a head node rounds every logit of
/// every token.
fn round_in_range(x: f64) -> Option<i64> {
    if x.is_nan() || x.abs() >= TRUNCATES_EXACTLY {
        return None;
    }
    let truncated = x as i64;
    let fraction = x - truncated as f64;
    let rounded = truncated + i64::from(fraction >= 0.5) - i64::from(fraction <= -0.5);
    (rounded.unsigned_abs() < 1 << LOGIT_BITS).then_some(rounded)
}

impl FixedPoint {
    /// Checks that the format is one the circuit supports.
    pub fn validate(&self) -> Result<(), FixedPointError> {
        // F <= 12 keeps delta = ln(S / 2^Q) * 2^F inside the 2^16-row table up to V = 2^20.
        if !(4..=12).contains(&self.frac_bits) {
            return Err(FixedPointError::FracBits(self.frac_bits));
        }
        if !(16..=34).contains(&self.exp_bits) {
            return Err(FixedPointError::ExpBits(self.exp_bits));
        }
        Ok(())
    }

    /// The fixed-point unit in nats, `2^-F`.
    pub fn unit(&self) -> f64 {
        (-(self.frac_bits as f64)).exp2()
    }

    /// The unit of log-probabilities in nats, `2^-(F + LOGPROB_EXTRA_BITS)`.
    pub fn logprob_unit(&self) -> f64 {
        (-((self.frac_bits + LOGPROB_EXTRA_BITS) as f64)).exp2()
    }

    /// `round(logit * 2^F)`, or an error naming the index and value.
    pub fn quantize(&self, index: usize, logit: f64) -> Result<i64, OutOfRange> {
        self.quantize_with_scale(index, logit, (self.frac_bits as f64).exp2())
    }

    /// [`FixedPoint::quantize`] of every logit of a row, or the first out of range.
    pub fn quantize_all(&self, logits: &[f32]) -> Result<Vec<i64>, OutOfRange> {
        // A head node quantizes every logit of every token: the scale is
        // worked out once, and the rounding needs no libm call.
        let scale = (self.frac_bits as f64).exp2();
        logits
            .iter()
            .enumerate()
            .map(|(index, &l)| self.quantize_with_scale(index, l as f64, scale))
            .collect()
    }

    fn quantize_with_scale(&self, index: usize, logit: f64, scale: f64) -> Result<i64, OutOfRange> {
        // Multiplying by 2^F is exact, so this is round(logit * 2^F).
        round_in_range(logit * scale).ok_or(OutOfRange {
            index,
            value: logit,
            frac_bits: self.frac_bits,
        })
    }

    /// `T[u] = round(2^Q * exp(-u / (2^F tau)))` for `u` in `0..2 TABLE_ROWS`:
    /// the low half is the table row `u`, the high half the row `u - 2^16`
    /// (distances with high limb 1). Past `2^(TABLE_BITS + 1)` every value is
    /// below `2^Q e^-32 < 1/2` for `tau <= 2`, so it rounds to 0.
    pub fn exp_table(&self, temperature: Temperature) -> Vec<u64> {
        // exp(-1 / (2^F tau)) = exp(-SCALE / (milli 2^F)), in 2^-64 units.
        let step = exp_neg_ratio_q64(
            TEMPERATURE_SCALE as u128,
            (temperature.milli() as u128) << self.frac_bits,
        );
        let mut acc: u128 = 1 << 64;
        (0..2 * TABLE_ROWS)
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
    /// `u_y / tau` is rounded down to the log-probability unit, by less than
    /// `2^-(F+4)` (exact at temperature 1). So
    /// `|lp - exact| <= 2^-(F+1) + 2^-Q + V (1/2 + 2^-17) / (G[0] - V) + 2^-(F+4)`,
    /// whatever the temperature: the exp table is computed for it exactly.
    pub fn logprob_error_bound(&self, vocab: usize) -> f64 {
        let q = (self.exp_bits as f64).exp2();
        let g0 = q * (-(self.unit() / 2.0)).exp();
        let v = vocab as f64;
        0.5 * self.unit() + 1.0 / q + v * (0.5 + 2f64.powi(-17)) / (g0 - v) + self.logprob_unit()
    }
}

/// exp(+-2^-bits) in 2^-64 units.
fn exp_fixed(bits: u32, positive: bool) -> u128 {
    exp_q64((1u128 << 64) >> bits, positive)
}

/// exp(-num / den) in 2^-64 units: the series at `num / (den 2^s) <= 1/2`, then
/// squared `s` times.
fn exp_neg_ratio_q64(num: u128, den: u128) -> u128 {
    let mut halvings = 0;
    while 2 * num > den << halvings {
        halvings += 1;
    }
    let mut value = exp_q64((num << 64) / (den << halvings), false);
    for _ in 0..halvings {
        value = mul_q64(value, value);
    }
    value
}

/// exp(+-x) for `x <= 1/2` in 2^-64 units, by its Taylor series with integer
/// arithmetic.
fn exp_q64(x: u128, positive: bool) -> u128 {
    let one: u128 = 1 << 64;
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

/// A fixed-point format the circuit does not support.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FixedPointError {
    #[error("frac_bits F = {0} must be in 4..=12")]
    FracBits(u32),
    #[error("exp_bits Q = {0} must be in 16..=34")]
    ExpBits(u32),
}

/// Why a value cannot be the statement's temperature.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TemperatureError {
    #[error("temperature {value} is outside the supported range 0.001..={max}", max = MAX_TEMPERATURE / TEMPERATURE_SCALE)]
    OutOfRange { value: f64 },
    #[error("temperature {value} is not a multiple of 0.001: the statement holds at exactly the temperature it names, in thousandths (try {nearest:.3})")]
    NotThousandths { value: f64, nearest: f64 },
}

/// A sampling temperature, an exact multiple of `1 / TEMPERATURE_SCALE` in
/// `(0, MAX_TEMPERATURE / TEMPERATURE_SCALE]`. The exp table is computed for it,
/// so the statement holds at exactly this temperature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Temperature(u32);

impl Temperature {
    /// Temperature 1, which greedy decoding uses for its log-probability.
    pub const ONE: Temperature = Temperature(TEMPERATURE_SCALE);

    /// The temperature `milli / 1000`.
    pub fn from_milli(milli: u32) -> Result<Temperature, TemperatureError> {
        if (1..=MAX_TEMPERATURE).contains(&milli) {
            Ok(Temperature(milli))
        } else {
            Err(TemperatureError::OutOfRange {
                value: milli as f64 / TEMPERATURE_SCALE as f64,
            })
        }
    }

    /// The temperature `value`, which must be a multiple of 0.001 in
    /// `0.001..=2` (up to floating-point noise).
    pub fn new(value: f64) -> Result<Temperature, TemperatureError> {
        let scaled = value * TEMPERATURE_SCALE as f64;
        let milli = scaled.round();
        if !value.is_finite() || value <= 0.0 || milli > MAX_TEMPERATURE as f64 || milli < 1.0 {
            return Err(TemperatureError::OutOfRange { value });
        }
        if (scaled - milli).abs() > 1e-6 {
            return Err(TemperatureError::NotThousandths {
                value,
                nearest: milli / TEMPERATURE_SCALE as f64,
            });
        }
        Ok(Temperature(milli as u32))
    }

    /// The temperature in thousandths.
    pub fn milli(self) -> u32 {
        self.0
    }

    pub fn value(self) -> f64 {
        self.0 as f64 / TEMPERATURE_SCALE as f64
    }
}

impl std::fmt::Display for Temperature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{:03}",
            self.0 / TEMPERATURE_SCALE,
            self.0 % TEMPERATURE_SCALE
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_table_matches_float_exp_at_every_temperature() {
        let fp = FixedPoint::default();
        for milli in [1, 100, 700, 1000, 1333, 2000] {
            let tau = Temperature::from_milli(milli).unwrap();
            let table = fp.exp_table(tau);
            assert_eq!(table.len(), 2 * TABLE_ROWS);
            assert_eq!(table[0], 1 << fp.exp_bits);
            for u in [
                1usize, 7, 2048, 10_000, 40_000, 65_535, 65_536, 100_000, 131_071,
            ] {
                let exact =
                    (fp.exp_bits as f64).exp2() * (-(u as f64) * fp.unit() / tau.value()).exp();
                assert!(
                    (table[u] as f64 - exact).abs() <= 0.5 + 1e-3,
                    "tau={tau} u={u}: {} vs {exact}",
                    table[u]
                );
            }
            assert!(table.windows(2).all(|w| w[0] >= w[1]));
            // Past the table every value rounds to 0.
            let past = (fp.exp_bits as f64).exp2()
                * (-((2 * TABLE_ROWS) as f64) * fp.unit() / tau.value()).exp();
            assert!(past < 0.5, "tau={tau}: {past}");
        }
        // Above temperature 1 the high half is needed; at or below it, it is 0.
        assert!(fp.exp_table(Temperature::from_milli(2000).unwrap())[TABLE_ROWS] > 0);
        assert!(fp.exp_table(Temperature::ONE)[TABLE_ROWS..]
            .iter()
            .all(|&t| t == 0));
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
    fn rounding_is_f64_round_inside_the_range_and_none_outside() {
        let mut xs = vec![
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            0.49999999999999994,
            -0.49999999999999994,
            4503599627370495.5,
            -4503599627370495.5,
            8388607.5,
            -8388607.5,
            0.0,
            -0.0,
            1e-300,
        ];
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let x = f64::from_bits(s);
            if x.is_finite() && x.abs() < TRUNCATES_EXACTLY {
                xs.push(x);
            }
            // Values near half-integers, where rounding decides.
            xs.push((s % 1_000_000) as f64 / 2.0 - 250_000.0);
        }
        for x in xs {
            let want = x.round();
            let want = (want.abs() < (1u64 << LOGIT_BITS) as f64).then_some(want as i64);
            assert_eq!(round_in_range(x), want, "{x:e}");
        }
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300, -1e300] {
            assert_eq!(round_in_range(x), None, "{x:e}");
        }
    }

    #[test]
    fn quantize_all_is_quantize_of_each() {
        let fp = FixedPoint::default();
        let logits = [0.0f32, 1.0, -1.0, 3.25, -7.25e-4, 4095.999, -4095.999];
        let all = fp.quantize_all(&logits).unwrap();
        for (i, (&l, z)) in logits.iter().zip(all).enumerate() {
            assert_eq!(fp.quantize(i, l as f64).unwrap(), z);
        }
        for bad in [
            4096.0f32,
            -4096.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            let err = fp.quantize_all(&[0.0, bad]).unwrap_err();
            assert_eq!(err.index, 1, "{bad}");
        }
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
    fn temperatures_are_exact_thousandths() {
        assert_eq!(Temperature::new(1.0).unwrap(), Temperature::ONE);
        assert_eq!(Temperature::new(0.7).unwrap().milli(), 700);
        assert_eq!(Temperature::new(0.1 + 0.2).unwrap().milli(), 300);
        assert_eq!(Temperature::new(2.0).unwrap().to_string(), "2.000");
        assert_eq!(Temperature::new(0.05).unwrap().to_string(), "0.050");
        for bad in [0.0, -1.0, 1e-4, 2.001, f64::INFINITY] {
            assert_eq!(
                Temperature::new(bad),
                Err(TemperatureError::OutOfRange { value: bad }),
                "{bad}"
            );
        }
        assert!(matches!(
            Temperature::new(f64::NAN),
            Err(TemperatureError::OutOfRange { .. })
        ));
        let err = Temperature::new(0.7355).unwrap_err();
        assert_eq!(
            err,
            TemperatureError::NotThousandths {
                value: 0.7355,
                nearest: 0.736
            }
        );
        assert!(err.to_string().contains("multiple of 0.001"), "{err}");
        assert!(Temperature::from_milli(0).is_err());
        assert_eq!(
            Temperature::from_milli(2001).unwrap_err().to_string(),
            "temperature 2.001 is outside the supported range 0.001..=2"
        );
    }
}
