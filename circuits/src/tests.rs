//! MockProver tests of the decode-step circuit: honest steps pass, and each kind of
//! cheating is rejected by the constraint that is meant to catch it.

use halo2_proofs::{
    dev::{FailureLocation, MockProver, VerifyFailure},
    pasta::Fp,
};

use crate::chips::step_check::instance_row::{LOGPROB, R};
use crate::fixed_point::{FixedPoint, Temperature, LOGPROB_EXTRA_BITS};
use crate::statement::Sampler;
use crate::tables::Tables;
use crate::witness::{pick, sample_token, StepWitness};
use crate::{CircuitShape, DecodeStepCircuit};

/// Deterministic pseudo-random logits (xorshift), in fixed point.
pub(crate) fn logits(seed: u64, vocab: usize, spread: f64) -> Vec<i64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..vocab)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
            ((unit - 0.5) * spread * 2048.0).round() as i64
        })
        .collect()
}

fn tables(temperature: Temperature) -> Tables {
    Tables::new(FixedPoint::default(), temperature)
}

fn step(seed: u64, vocab: usize, sampler: Sampler) -> StepWitness {
    let tables = tables(sampler.temperature());
    let z = logits(seed, vocab, 20.0);
    let token = sample_token(&tables, &z, sampler).unwrap();
    StepWitness::new(&tables, z, token, sampler).unwrap()
}

fn run(
    shape: CircuitShape,
    steps: Vec<StepWitness>,
    instance: Vec<Fp>,
) -> Result<(), Vec<VerifyFailure>> {
    let circuit = DecodeStepCircuit::new(shape, steps);
    shape.scope(|| {
        MockProver::run(shape.k(), &circuit, vec![instance])
            .expect("synthesis")
            .verify()
    })
}

fn honest(steps: Vec<StepWitness>, lanes: usize) -> (CircuitShape, Vec<StepWitness>, Vec<Fp>) {
    let shape = CircuitShape::new(
        steps[0].rows.len(),
        FixedPoint::default(),
        steps.len(),
        lanes,
    )
    .unwrap()
    .with_temperature(steps[0].statement.sampler.temperature());
    let statements: Vec<_> = steps.iter().map(|s| s.statement).collect();
    (shape, steps, DecodeStepCircuit::instance(&statements))
}

fn sample(milli: u32, r: u64) -> Sampler {
    Sampler::Sample {
        temperature: Temperature::from_milli(milli).unwrap(),
        r,
    }
}

#[test]
fn pick_states_what_the_witness_states() {
    for (seed, sampler) in [
        (1, Sampler::Greedy),
        (2, sample(1000, 1 << 63)),
        (3, sample(700, 12_345)),
        (4, sample(1, u64::MAX)),
        (5, sample(2000, 0)),
    ] {
        for vocab in [1, 7, 4096] {
            let tables = tables(sampler.temperature());
            let z = logits(seed, vocab, 20.0);
            let picked = pick(&tables, &z, sampler).unwrap();
            let token = sample_token(&tables, &z, sampler).unwrap();
            let witness = StepWitness::new(&tables, z, token, sampler).unwrap();
            assert_eq!(picked, witness.statement, "seed {seed}, vocab {vocab}");
        }
    }
}

#[test]
fn honest_greedy_and_sampled_steps_pass() {
    let steps = vec![
        step(1, 1000, Sampler::Greedy),
        step(2, 1000, sample(1000, 0x1234_5678_9abc_def0)),
    ];
    let (shape, steps, instance) = honest(steps, 3);
    assert_eq!(run(shape, steps, instance), Ok(()));
}

#[test]
fn honest_steps_pass_at_other_temperatures() {
    // 0.1 and 0.731 use only the low half of the exp table; 1.5 and 2 the high
    // half too.
    for milli in [100, 731, 1500, 2000] {
        let steps = vec![
            step(3, 700, sample(milli, 0x9876_5432_1fed_cba9)),
            step(4, 700, sample(milli, 42)),
        ];
        let (shape, steps, instance) = honest(steps, 2);
        assert_eq!(
            run(shape, steps, instance),
            Ok(()),
            "temperature {milli}/1000"
        );
    }
}

#[test]
fn a_step_at_another_temperature_is_refused() {
    let err = StepWitness::new(
        &tables(Temperature::ONE),
        logits(1, 50, 20.0),
        0,
        sample(700, 0),
    )
    .unwrap_err();
    assert!(
        matches!(err, crate::StepError::TemperatureMismatch { .. }),
        "{err}"
    );
    let err = sample_token(
        &tables(Temperature::from_milli(700).unwrap()),
        &[0, 1],
        Sampler::Greedy,
    )
    .unwrap_err();
    assert!(
        matches!(err, crate::StepError::TemperatureMismatch { .. }),
        "{err}"
    );
}

#[test]
fn a_logit_out_of_range_is_named_by_its_index_even_at_the_extremes() {
    let tables = tables(Temperature::ONE);
    let limit = 1i64 << crate::fixed_point::LOGIT_BITS;
    for (bad, index) in [(limit, 2), (-limit, 1), (i64::MIN, 3), (i64::MAX, 0)] {
        let mut z = vec![5, -7, 11, 0];
        z[index] = bad;
        for result in [
            sample_token(&tables, &z, Sampler::Greedy).map(|_| ()),
            crate::pick(&tables, &z, Sampler::Greedy).map(|_| ()),
        ] {
            assert!(
                matches!(result, Err(crate::StepError::LogitOutOfRange { index: i, value }) if i == index && value == bad),
                "{bad}: {result:?}"
            );
        }
    }
}

#[test]
fn greedy_is_rejected_in_a_circuit_at_another_temperature() {
    let (shape, steps, instance) = honest(vec![step(5, 300, Sampler::Greedy)], LANES);
    let shape = shape.with_temperature(Temperature::from_milli(700).unwrap());
    rejected_with(shape, steps, instance, "greedy has temperature 1");
}

/// Short names of the failures: constraint names, `lookup N`, or
/// `permutation in REGION`.
pub(crate) fn names(failures: &[VerifyFailure]) -> Vec<String> {
    let mut names: Vec<String> = failures
        .iter()
        .map(|f| match f {
            VerifyFailure::ConstraintNotSatisfied { constraint, .. } => {
                let text = constraint.to_string();
                text.split('\'').nth(1).unwrap_or(&text).to_string()
            }
            VerifyFailure::Lookup { lookup_index, .. } => format!("lookup {lookup_index}"),
            VerifyFailure::Permutation { location, .. } => match location {
                FailureLocation::InRegion { region, .. } => {
                    let text = region.to_string();
                    format!(
                        "permutation in {}",
                        text.split('\'').nth(1).unwrap_or(&text)
                    )
                }
                FailureLocation::OutsideRegion { .. } => "permutation outside regions".to_string(),
            },
            other => format!("{other:?}"),
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

const LANES: usize = 2;
/// Lookup indices follow `configure` order: the exp row of each lane's low
/// limb, the high limbs of each pair of lanes, then the step check's
/// log-sum-exp bracket, then the range limbs.
fn exp_lookup(lane: usize) -> usize {
    lane
}
fn high_limb_lookup(lane: usize) -> usize {
    LANES + lane / 2
}
/// The region of step 0's lanes: region 0 is the table.
const STEP_0_LANES: usize = 1;

/// Lookup `lookup_index` failing at `offset` of step 0's lanes.
fn lane_lookup_failure(lookup_index: usize, offset: usize) -> VerifyFailure {
    VerifyFailure::Lookup {
        lookup_index,
        location: FailureLocation::InRegion {
            region: (STEP_0_LANES, "logit lanes").into(),
            offset,
        },
    }
}
/// A negative value's running sum does not end at zero.
const RANGE_REJECTED: &str = "permutation in range check";

fn rejected_with(shape: CircuitShape, steps: Vec<StepWitness>, instance: Vec<Fp>, expected: &str) {
    let failures = run(shape, steps, instance).expect_err("a cheating witness must be rejected");
    let names = names(&failures);
    assert!(
        names.iter().any(|n| n == expected),
        "expected failure {expected:?}, got {names:?}"
    );
}

fn fixture(sampler: Sampler) -> (CircuitShape, Vec<StepWitness>, Vec<Fp>) {
    honest(
        vec![step(7, 600, sampler), step(8, 600, Sampler::Greedy)],
        LANES,
    )
}

const SAMPLE: Sampler = Sampler::Sample {
    temperature: Temperature::ONE,
    r: 0x8000_0000_0000_0000,
};

/// Rebuilds step 0 with another token (and optionally another maximum), keeping
/// its statement's commitment; the instance claims the new token.
fn cheat_token(
    sampler: Sampler,
    token_shift: i64,
    max_shift: Option<i64>,
) -> (CircuitShape, Vec<StepWitness>, Vec<Fp>) {
    let (shape, mut steps, _) = fixture(sampler);
    let honest = &steps[0];
    let token = (honest.statement.token as i64 + token_shift).rem_euclid(600) as u32;
    let max = match max_shift {
        None => honest.max_logit,
        Some(_) => honest.logits[token as usize],
    };
    let cheat = StepWitness::build(
        &tables(sampler.temperature()),
        honest.logits.clone(),
        token,
        sampler,
        max,
    )
    .unwrap();
    steps[0] = cheat;
    let statements: Vec<_> = steps.iter().map(|s| s.statement).collect();
    (
        shape,
        steps.clone(),
        DecodeStepCircuit::instance(&statements),
    )
}

#[test]
fn greedy_rejects_a_token_below_the_maximum() {
    let (shape, steps, instance) = cheat_token(Sampler::Greedy, 1, None);
    rejected_with(shape, steps, instance, "greedy token is the maximum");
}

#[test]
fn greedy_rejects_a_maximum_that_is_not_one() {
    // Claiming the token's own logit as the maximum makes larger logits negative
    // distances, whose high limb the 8-bit pair lookup rejects, at the exact row.
    let (shape, steps, instance) = cheat_token(Sampler::Greedy, 1, Some(0));
    let claimed = steps[0].max_logit;
    let larger = steps[0].logits.iter().position(|&z| z > claimed).unwrap();
    let (lane, row) = shape.logit_cell(0, larger);
    let failures = run(shape, steps, instance).unwrap_err();
    assert!(
        failures.contains(&lane_lookup_failure(high_limb_lookup(lane), row)),
        "{failures:?}"
    );
}

#[test]
fn greedy_tie_goes_to_the_lowest_index() {
    let tables = tables(Temperature::ONE);
    let mut z = logits(3, 600, 20.0);
    let max = *z.iter().max().unwrap();
    z[10] = max + 5;
    z[400] = max + 5;
    assert_eq!(sample_token(&tables, &z, Sampler::Greedy).unwrap(), 10);
    let first = StepWitness::new(&tables, z.clone(), 10, Sampler::Greedy).unwrap();
    let (shape, steps, instance) = honest(vec![first], LANES);
    assert_eq!(run(shape, steps, instance), Ok(()));
    // The later maximum is refused by the prover and by the circuit.
    assert!(StepWitness::new(&tables, z.clone(), 400, Sampler::Greedy).is_err());
    let later = StepWitness::build(&tables, z, 400, Sampler::Greedy, max + 5).unwrap();
    let statements = [later.statement];
    let failures = run(shape, vec![later], DecodeStepCircuit::instance(&statements)).unwrap_err();
    // Index 10 is a maximum before the token: exactly its row fails.
    let (lane, row) = shape.logit_cell(0, 10);
    assert_eq!(lane, 0);
    assert_eq!(failures.len(), 1, "{failures:?}");
    let located = matches!(
        &failures[0],
        VerifyFailure::ConstraintNotSatisfied { constraint, location: FailureLocation::InRegion { region, offset }, .. }
            if constraint.to_string().contains("greedy token is the first maximum")
                && *region == (STEP_0_LANES, "logit lanes").into()
                && *offset == row
    );
    assert!(located, "{failures:?}");
}

#[test]
fn logprob_off_by_one_unit_is_rejected() {
    for sampler in [Sampler::Greedy, SAMPLE] {
        for delta in [-1i64, 1] {
            let (shape, steps, mut instance) = fixture(sampler);
            instance[LOGPROB] += crate::statement::signed(delta as i128);
            rejected_with(shape, steps, instance, "log-probability");
        }
    }
}

#[test]
fn wrong_log_sum_exp_is_rejected() {
    for delta_shift in [-1i64, 1] {
        let (shape, mut steps, instance) = fixture(SAMPLE);
        steps[0].delta = (steps[0].delta as i64 + delta_shift) as u64;
        // A consistent claim: lp moves with delta, so only the bracket can catch it.
        let mut instance = instance;
        instance[LOGPROB] -= crate::statement::signed((delta_shift << LOGPROB_EXTRA_BITS) as i128);
        rejected_with(shape, steps, instance, RANGE_REJECTED);
    }
}

#[test]
fn wrong_exponential_is_rejected() {
    for (index, high) in [(5, false), (5, true), (450, false)] {
        let (shape, mut steps, instance) = fixture(SAMPLE);
        let row = &mut steps[0].rows[index];
        if high {
            row.t_hi += 1;
        } else {
            row.t_lo += 1;
        }
        let (lane, offset) = shape.logit_cell(0, index);
        let failures = run(shape, steps, instance).unwrap_err();
        assert!(
            failures.contains(&lane_lookup_failure(exp_lookup(lane), offset)),
            "{failures:?}"
        );
    }
}

#[test]
fn wrong_tempered_token_distance_is_rejected() {
    // A consistent claim with another quotient: lp moves with it.
    let steps = vec![step(6, 300, sample(700, 77))];
    let (shape, mut steps, mut instance) = honest(steps, LANES);
    steps[0].token_quotient += 1;
    instance[LOGPROB] -= Fp::one();
    rejected_with(shape, steps, instance, "tempered token distance");
}

#[test]
fn sampled_token_outside_its_interval_is_rejected() {
    for shift in [-1i64, 1] {
        let (shape, steps, instance) = cheat_token(SAMPLE, shift, None);
        rejected_with(shape, steps, instance, RANGE_REJECTED);
    }
}

#[test]
fn changed_r_is_rejected() {
    let (shape, steps, mut instance) = fixture(SAMPLE);
    instance[R] += Fp::from(1u64 << 40);
    let failures = run(shape, steps, instance).unwrap_err();
    assert!(
        names(&failures).contains(&"scaled r".to_string()),
        "{:?}",
        names(&failures)
    );
}

#[test]
fn logits_that_are_not_the_lanes_distances_are_rejected() {
    // The committed column says another logit than the one the lanes' limbs
    // decompose: the high limb is no longer a small integer at exactly that row.
    let (shape, mut steps, instance) = fixture(Sampler::Greedy);
    let victim = (steps[0].statement.token as usize + 1) % shape.vocab;
    steps[0].logits[victim] -= 3;
    let failures = run(shape, steps, instance).unwrap_err();
    let (lane, row) = shape.logit_cell(0, victim);
    assert_eq!(
        failures,
        vec![lane_lookup_failure(high_limb_lookup(lane), row)]
    );
}

#[test]
fn swapped_step_statements_are_rejected() {
    let (shape, steps, instance) = fixture(SAMPLE);
    let per = crate::statement::INSTANCE_PER_STEP;
    let mut swapped = instance[per..2 * per].to_vec();
    swapped.extend_from_slice(&instance[..per]);
    let names = names(&run(shape, steps, swapped).unwrap_err());
    for expected in ["split token row", "log-probability"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected:?} not in {names:?}"
        );
    }
}

#[test]
fn failure_location_is_inside_the_step_check() {
    let (shape, steps, mut instance) = fixture(Sampler::Greedy);
    instance[LOGPROB] += Fp::one();
    let failures = run(shape, steps, instance).unwrap_err();
    let located = failures.iter().any(|f| matches!(
        f,
        VerifyFailure::ConstraintNotSatisfied { location: FailureLocation::InRegion { region, offset: 0 }, .. }
            if region.to_string().contains("step check")
    ));
    assert!(located, "{failures:?}");
}

mod error_bound {
    //! The proven log-probability against float64 log-softmax of the quantized
    //! (and, when sampling, tempered) logits.
    use super::*;
    use proptest::prelude::*;

    /// float64 log-softmax of `z 2^-F / tau` at the token.
    fn exact_logprob(z: &[i64], token: usize, unit: f64, temperature: f64) -> f64 {
        let max = *z.iter().max().unwrap();
        // Distances from the maximum are >= 0, so nothing overflows.
        let scaled = |z: i64| (max - z) as f64 * unit / temperature;
        let lse: f64 = z.iter().map(|&z| (-scaled(z)).exp()).sum::<f64>().ln();
        -scaled(z[token]) - lse
    }

    fn check(z: Vec<i64>, sampler: Sampler) -> f64 {
        let fp = FixedPoint::default();
        let temperature = sampler.temperature();
        let tables = Tables::new(fp, temperature);
        let vocab = z.len();
        let token = sample_token(&tables, &z, sampler).unwrap();
        let exact = exact_logprob(&z, token as usize, fp.unit(), temperature.value());
        let w = StepWitness::new(&tables, z, token, sampler).unwrap();
        let proven = w.statement.logprob_nats(fp.frac_bits);
        let error = (proven - exact).abs();
        assert!(
            error <= fp.logprob_error_bound(vocab),
            "error {error:e} > bound {:e} (V = {vocab}, {sampler})",
            fp.logprob_error_bound(vocab)
        );
        error
    }

    #[test]
    fn bound_meets_the_targets() {
        let fp = FixedPoint::default();
        for (vocab, target) in [(32_000, 3e-4), (262_144, 5e-4)] {
            let bound = fp.logprob_error_bound(vocab);
            assert!(bound <= target, "V = {vocab}: {bound}");
        }
    }

    #[test]
    fn sampled_at_the_real_vocabulary_within_bound() {
        for (seed, milli) in [(1u64, 100u32), (2, 700), (3, 1000), (4, 2000)] {
            let z = logits(seed, 262_144, 30.0);
            check(z, sample(milli, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        }
    }

    fn adversarial(kind: u8, seed: u64, vocab: usize) -> Vec<i64> {
        let base = logits(seed, vocab, 8.0);
        match kind {
            // Near ties: everything within a few units of one value.
            0 => base.iter().map(|z| 5000 + z.rem_euclid(3)).collect(),
            // One huge peak over noise.
            1 => base
                .iter()
                .enumerate()
                .map(|(i, z)| if i == vocab / 3 { 60 * 2048 } else { *z })
                .collect(),
            // Flat.
            2 => vec![-1234; vocab],
            // Wide range: uniform over almost the whole representable interval.
            _ => logits(seed, vocab, 8000.0),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        #[test]
        fn greedy_within_bound(seed in any::<u64>(), kind in 0u8..4, vocab in prop::sample::select(vec![2usize, 100, 4096, 32_000])) {
            check(adversarial(kind, seed, vocab), Sampler::Greedy);
        }

        #[test]
        fn sampled_within_bound(seed in any::<u64>(), kind in 0u8..4, r in any::<u64>(), milli in prop_oneof![Just(100u32), Just(700), Just(1300), Just(2000), 100u32..=2000]) {
            check(adversarial(kind, seed, 32_000), sample(milli, r));
        }
    }
}

#[test]
fn a_shape_that_leaves_a_lane_empty_is_refused() {
    // V = 5 in 4 lanes: 2 rows each would leave the fourth without logits.
    assert_eq!(
        CircuitShape::new(5, FixedPoint::default(), 1, 4),
        Err(crate::ShapeError::EmptyLane { vocab: 5, lanes: 4 })
    );
    assert!(CircuitShape::new(5, FixedPoint::default(), 1, 3).is_ok());
}

#[test]
fn fitted_shapes_take_the_fewest_lanes_at_the_floor_k() {
    let fp = FixedPoint::default();
    for (vocab, steps, lanes) in [
        (4096, 1, 1),
        (32_000, 1, 1),
        (262_144, 1, 3),
        (32_000, 16, 4),
    ] {
        let shape = CircuitShape::fitted(vocab, fp, steps).unwrap();
        assert_eq!((shape.lanes, shape.k()), (lanes, 17), "V={vocab} T={steps}");
        // One lane fewer would need more rows.
        if lanes > 1 {
            assert!(CircuitShape::new(vocab, fp, steps, lanes - 1).unwrap().k() > 17);
        }
    }
}
