//! MockProver tests of the decode-step circuit: honest steps pass, and each kind of
//! cheating is rejected by the constraint that is meant to catch it.

use halo2_proofs::{
    dev::{FailureLocation, MockProver, VerifyFailure},
    pasta::Fp,
};

use crate::chips::step_check::instance_row::{LOGPROB, R};
use crate::fixed_point::FixedPoint;
use crate::statement::Sampler;
use crate::tables::Tables;
use crate::witness::{sample_token, StepWitness};
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

fn step(seed: u64, vocab: usize, sampler: Sampler) -> StepWitness {
    let fp = FixedPoint::default();
    let tables = Tables::new(fp);
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
    .unwrap();
    let statements: Vec<_> = steps.iter().map(|s| s.statement).collect();
    (shape, steps, DecodeStepCircuit::instance(&statements))
}

#[test]
fn honest_greedy_and_sampled_steps_pass() {
    let steps = vec![
        step(1, 1000, Sampler::Greedy),
        step(
            2,
            1000,
            Sampler::Sample {
                beta: 731,
                r: 0x1234_5678_9abc_def0,
            },
        ),
    ];
    let (shape, steps, instance) = honest(steps, 3);
    assert_eq!(run(shape, steps, instance), Ok(()));
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
/// Lookup indices follow `configure` order: five per lane (d_lo, d_hi, exp, w_hi,
/// rem), then the step check's log-sum-exp bracket, then the range limbs.
const LOOKUP_D_HI: usize = 1;
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
    beta: 512,
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
    let fp = FixedPoint::default();
    let honest = &steps[0];
    let token = (honest.statement.token as i64 + token_shift).rem_euclid(600) as u32;
    let max = match max_shift {
        None => honest.max_logit,
        Some(_) => honest.logits[token as usize],
    };
    let cheat =
        StepWitness::build(&Tables::new(fp), honest.logits.clone(), token, sampler, max).unwrap();
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
    // distances, which the 9-bit high-limb lookup rejects.
    let (shape, steps, instance) = cheat_token(Sampler::Greedy, 1, Some(0));
    rejected_with(shape, steps, instance, &format!("lookup {LOOKUP_D_HI}"));
}

#[test]
fn greedy_tie_goes_to_the_lowest_index() {
    let fp = FixedPoint::default();
    let tables = Tables::new(fp);
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
    // Index 10 needs a distance of at least 1 before the token: its high limb wraps.
    assert!(
        names(&failures).contains(&format!("lookup {LOOKUP_D_HI}")),
        "{:?}",
        names(&failures)
    );
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
        instance[LOGPROB] -= crate::statement::signed(delta_shift as i128);
        rejected_with(shape, steps, instance, RANGE_REJECTED);
    }
}

#[test]
fn wrong_exponential_is_rejected() {
    let (shape, mut steps, instance) = fixture(SAMPLE);
    steps[0].rows[5].t += 1;
    let failures = run(shape, steps, instance).unwrap_err();
    assert!(
        names(&failures).contains(&"lookup 2".to_string()),
        "{:?}",
        names(&failures)
    );
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
    // The committed column says another logit than the one the lanes used:
    // exactly the "logit value" constraint at that row rejects it.
    let (shape, mut steps, instance) = fixture(Sampler::Greedy);
    let victim = (steps[0].statement.token as usize + 1) % shape.vocab;
    steps[0].logits[victim] -= 3;
    let failures = run(shape, steps, instance).unwrap_err();
    let (lane, row) = shape.logit_cell(0, victim);
    assert_eq!(failures.len(), 1, "{failures:?}");
    let located = matches!(
        &failures[0],
        VerifyFailure::ConstraintNotSatisfied { constraint, location: FailureLocation::InRegion { region, offset }, .. }
            if constraint.to_string().contains("logit value")
                && region.to_string().contains("logit lanes")
                && *offset == row
    );
    assert!(located, "lane {lane} row {row}: {failures:?}");
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

    fn exact_logprob(distances: &[i64], token: usize, unit: f64) -> f64 {
        // log p_y = -w_y u - ln sum exp(-w_i u), all w_i >= 0 so no overflow.
        let lse: f64 = distances
            .iter()
            .map(|&w| (-(w as f64) * unit).exp())
            .sum::<f64>()
            .ln();
        -(distances[token] as f64) * unit - lse
    }

    fn check(z: Vec<i64>, sampler: Sampler) -> f64 {
        let fp = FixedPoint::default();
        let tables = Tables::new(fp);
        let vocab = z.len();
        let token = sample_token(&tables, &z, sampler).unwrap();
        let w = StepWitness::new(&tables, z, token, sampler).unwrap();
        let distances: Vec<i64> = w.rows.iter().map(|r| r.distance()).collect();
        let exact = exact_logprob(&distances, token as usize, fp.unit());
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
    fn bound_meets_the_target_at_32000() {
        let fp = FixedPoint::default();
        assert!(
            fp.logprob_error_bound(32_000) <= 3e-4,
            "{}",
            fp.logprob_error_bound(32_000)
        );
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
        fn sampled_within_bound(seed in any::<u64>(), kind in 0u8..4, r in any::<u64>(), beta in 300u32..1000) {
            check(adversarial(kind, seed, 32_000), Sampler::Sample { beta, r });
        }
    }
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
