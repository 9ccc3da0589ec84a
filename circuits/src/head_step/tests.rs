//! MockProver tests of the head variant: honest steps pass, and each kind of
//! cheating is rejected by the constraint meant to catch it.

use std::sync::Arc;

use halo2_proofs::{
    dev::{MockProver, VerifyFailure},
    pasta::Fp,
};

use super::*;
use crate::tests::names;

const VOCAB: usize = 64;
const HIDDEN: usize = 16;
/// Three products per row: 16 = 5 * 3 + 1, so the last row of each logit is padded.
const COLUMNS: usize = 3;
/// A negative value's running sum does not end at zero.
const RANGE_REJECTED: &str = "permutation in range check";
/// `C_h` is the output of the last Poseidon permutation, tied to the instance.
const COMMITMENT_REJECTED: &str = "permutation in permute state";

const SAMPLE: Sampler = Sampler::Sample {
    beta: 600,
    r: 0x9000_0000_0000_0001,
};

fn fp() -> FixedPoint {
    FixedPoint::default()
}

fn weights(seed: u64) -> Arc<HeadWeights> {
    Arc::new(HeadWeights::random(
        VOCAB,
        HIDDEN,
        HeadFormat::default_for(fp()),
        seed,
    ))
}

fn hidden(seed: u64) -> Vec<i64> {
    HeadFormat::default_for(fp())
        .quantize_hidden(&random_hidden(HIDDEN, seed))
        .unwrap()
}

fn step(weights: &HeadWeights, seed: u64, sampler: Sampler) -> HeadStepWitness {
    HeadStepWitness::sample(weights, &Tables::new(fp()), fp(), hidden(seed), sampler).unwrap()
}

fn shape(steps: usize, columns: usize) -> HeadShape {
    HeadShape::with_columns(VOCAB, HIDDEN, fp(), steps, 2, columns).unwrap()
}

fn instance(steps: &[HeadStepWitness]) -> Vec<Fp> {
    let statements: Vec<_> = steps.iter().map(|s| s.statement()).collect();
    HeadDecodeStepCircuit::instance(&statements)
}

fn run(
    shape: HeadShape,
    weights: Arc<HeadWeights>,
    steps: Vec<HeadStepWitness>,
    instance: Vec<Fp>,
) -> Result<(), Vec<VerifyFailure>> {
    let circuit = HeadDecodeStepCircuit::new(shape, weights, steps);
    shape.scope(|| {
        MockProver::run(shape.k(), &circuit, vec![instance])
            .expect("synthesis")
            .verify()
    })
}

/// Two steps (sampled, greedy) of the default weights, and their instance.
fn fixture() -> (Arc<HeadWeights>, Vec<HeadStepWitness>, Vec<Fp>) {
    let w = weights(1);
    let steps = vec![step(&w, 10, SAMPLE), step(&w, 11, Sampler::Greedy)];
    let instance = instance(&steps);
    (w, steps, instance)
}

fn rejected_with(
    weights: Arc<HeadWeights>,
    steps: Vec<HeadStepWitness>,
    instance: Vec<Fp>,
    expected: &str,
) {
    let failures = run(shape(steps.len(), COLUMNS), weights, steps, instance)
        .expect_err("a cheating witness must be rejected");
    let names = names(&failures);
    assert!(
        names.iter().any(|n| n == expected),
        "expected failure {expected:?}, got {names:?}"
    );
}

#[test]
fn honest_steps_pass() {
    let (w, steps, instance) = fixture();
    assert_eq!(
        run(
            shape(2, COLUMNS),
            w.clone(),
            steps.clone(),
            instance.clone()
        ),
        Ok(())
    );
    // One product per row (P = d) and all products in one row (P = 1).
    for columns in [1, HIDDEN] {
        assert_eq!(
            run(
                shape(2, columns),
                w.clone(),
                steps.clone(),
                instance.clone()
            ),
            Ok(())
        );
    }
}

#[test]
fn shape_picks_the_fewest_columns_at_the_smallest_k() {
    let small = HeadShape::new(VOCAB, HIDDEN, fp(), 1, 1).unwrap();
    assert_eq!((small.columns, small.k()), (1, 17));
    // 4096 x 128 products do not fit 2^17 rows one per row.
    let large = HeadShape::new(4096, 128, fp(), 1, 1).unwrap();
    assert_eq!(large.k(), 17);
    assert!(large.columns > 1 && large.columns < 128);
    assert!(large.head_rows() < large.usable_rows());
    let fewer = HeadShape::with_columns(4096, 128, fp(), 1, 1, large.columns - 1).unwrap();
    assert!(fewer.k() > 17);
}

#[test]
fn hidden_state_other_than_committed_is_rejected() {
    // The prover runs the head on another hidden state but claims C_h of the real one.
    let (w, mut steps, instance) = fixture();
    let mut h = steps[0].hidden.clone();
    h[3] += 1;
    let sampler = steps[0].statement().sampler;
    steps[0] = HeadStepWitness::sample(&w, &Tables::new(fp()), fp(), h, sampler).unwrap();
    let mut forged = super::tests::instance(&steps);
    forged[0] = instance[0];
    rejected_with(w, steps, forged, COMMITMENT_REJECTED);
}

#[test]
fn changed_public_commitment_is_rejected() {
    let (w, steps, mut instance) = fixture();
    instance[INSTANCE_PER_STEP] += Fp::one();
    rejected_with(w, steps, instance, COMMITMENT_REJECTED);
}

/// Step 1 (greedy) with logit `victim` moved by `shift`, the lanes consistent with
/// the moved logit (the token stays the first maximum).
fn tampered_logit(shift: i64) -> (Arc<HeadWeights>, Vec<HeadStepWitness>, Vec<Fp>, usize) {
    let (w, mut steps, _) = fixture();
    let honest = &steps[1];
    let token = honest.statement().token as usize;
    let victim = (token + 1) % VOCAB;
    let mut z = honest.step.logits.clone();
    z[victim] += shift;
    assert!(z[victim] < z[token]);
    let mut forged =
        StepWitness::new(fp(), &Tables::new(fp()), z, token as u32, Sampler::Greedy).unwrap();
    forged.statement.commitment = honest.statement().commitment;
    steps[1].step = forged;
    let instance = instance(&steps);
    (w, steps, instance, victim)
}

#[test]
fn logit_not_the_head_of_the_hidden_state_is_rejected() {
    let (w, steps, instance, _) = tampered_logit(-3);
    rejected_with(w, steps, instance, "rounding");
}

#[test]
fn logit_with_a_matching_out_of_range_remainder_is_rejected() {
    // Moving z by -3 and the remainder by +3 * 2^16 satisfies the rounding equation;
    // the remainder's 16-bit range check catches it.
    let (w, mut steps, instance, victim) = tampered_logit(-3);
    steps[1].remainders[victim] += 3 << REM_BITS;
    rejected_with(w, steps, instance, RANGE_REJECTED);
}

#[test]
fn one_logit_from_another_hidden_state_is_rejected() {
    // The prover computes logit 5 from a copy of h with h_3 moved by 1.0, with that
    // logit's z and remainder consistent with the moved copy.
    // One step: the hook moves the copy in every step of the circuit.
    let (w, mut steps, _) = fixture();
    steps.remove(0);
    let (logit, j, delta) = (5, 3, 1i64 << DEFAULT_HIDDEN_FRAC);
    let mut moved = steps[0].hidden.clone();
    moved[j] += delta;
    let (z, rem) = w.logits(&moved).unwrap();
    let honest = &steps[0];
    assert_ne!(z[logit], honest.step.logits[logit]);
    let mut logits = honest.step.logits.clone();
    logits[logit] = z[logit];
    let token = honest.statement().token;
    let mut step =
        StepWitness::new(fp(), &Tables::new(fp()), logits, token, Sampler::Greedy).unwrap();
    step.statement.commitment = honest.statement().commitment;
    steps[0].step = step;
    steps[0].remainders[logit] = rem[logit];
    // The public statement (C_h, token) stays; lp follows the moved logit.
    let instance = super::tests::instance(&steps);
    crate::chips::head::TAMPER_HIDDEN_COPY.with(|t| t.set(Some((logit, j, delta))));
    let result = run(shape(1, COLUMNS), w, steps, instance);
    crate::chips::head::TAMPER_HIDDEN_COPY.with(|t| t.set(None));
    let names = names(&result.expect_err("a cheating witness must be rejected"));
    assert_eq!(names, ["hidden state repeats"]);
}

#[test]
fn wrong_remainder_is_rejected() {
    for delta in [-1i64, 1] {
        let (w, mut steps, instance) = fixture();
        steps[0].remainders[7] += delta;
        rejected_with(w, steps, instance, "rounding");
    }
}

#[test]
fn hidden_state_out_of_range_is_rejected() {
    // A cheating prover bypassing the witness builder: h_0 = 2^24 (its limb needs 26 bits).
    let (w, mut steps, _) = fixture();
    let mut h = steps[0].hidden.clone();
    h[0] = 1 << HIDDEN_BITS;
    let (z, rem) = {
        // The head's logits of that state, computed without the builder's checks.
        let half = 1i128 << (REM_BITS - 1);
        (0..VOCAB)
            .map(|i| {
                let acc: i128 = w
                    .row(i)
                    .iter()
                    .zip(&h)
                    .map(|(&a, &b)| a as i128 * b as i128)
                    .sum();
                (
                    (acc + half).div_euclid(1 << REM_BITS) as i64,
                    (acc + half).rem_euclid(1 << REM_BITS) as i64,
                )
            })
            .unzip::<_, _, Vec<_>, Vec<_>>()
    };
    let tables = Tables::new(fp());
    let token = sample_token(&tables, &z, Sampler::Greedy).unwrap();
    let mut step = StepWitness::new(fp(), &tables, z, token, Sampler::Greedy).unwrap();
    step.statement.commitment = commit_hidden(w.format(), &h);
    steps[0] = HeadStepWitness {
        hidden: h,
        remainders: rem,
        step,
    };
    let instance = instance(&steps);
    rejected_with(w, steps, instance, RANGE_REJECTED);
}

#[test]
fn wrong_token_and_logprob_are_rejected() {
    // Greedy: claim the next token (whose logit is below the maximum).
    let (w, mut steps, _) = fixture();
    let honest = &steps[1];
    let token = (honest.statement().token + 1) % VOCAB as u32;
    let mut cheat = StepWitness::build(
        fp(),
        &Tables::new(fp()),
        honest.step.logits.clone(),
        token,
        Sampler::Greedy,
        honest.step.max_logit,
    )
    .unwrap();
    cheat.statement.commitment = honest.statement().commitment;
    steps[1].step = cheat;
    let instance = instance(&steps);
    rejected_with(w, steps, instance, "greedy token is the maximum");

    for delta in [-1i64, 1] {
        let (w, steps, mut instance) = fixture();
        instance[instance_row::LOGPROB] += crate::statement::signed(delta as i128);
        rejected_with(w, steps, instance, "log-probability");
    }
}

#[test]
fn other_weights_do_not_verify() {
    // The circuit's fixed columns are the head: steps computed with other weights
    // fail the rounding of the products.
    let (_, steps, instance) = fixture();
    rejected_with(weights(2), steps, instance, "rounding");
}

#[test]
fn builder_refuses_out_of_range_values() {
    let format = HeadFormat::default_for(fp());
    let tables = Tables::new(fp());
    let w = weights(1);
    let err = format.quantize_hidden(&[0.5, f32::NAN]).unwrap_err();
    assert!(
        matches!(err, HeadError::HiddenOutOfRange { index: 1, .. }),
        "{err}"
    );
    let err = format.quantize_hidden(&[5000.0]).unwrap_err();
    assert!(err.to_string().contains("h[0] = 5000"), "{err}");
    let err = HeadWeights::quantize(2, 2, format, &[0.0, 0.0, 600.0, 0.0]).unwrap_err();
    assert!(
        matches!(err, HeadError::WeightOutOfRange { row: 1, col: 0, .. }),
        "{err}"
    );
    let err = HeadWeights::new(2, 2, format, vec![0; 3]).unwrap_err();
    assert_eq!(
        err,
        HeadError::WeightCount {
            expected: 4,
            got: 3
        }
    );
    let err = HeadStepWitness::sample(&w, &tables, fp(), vec![0; HIDDEN - 1], Sampler::Greedy)
        .unwrap_err();
    assert_eq!(
        err,
        HeadError::HiddenLength {
            expected: HIDDEN,
            got: HIDDEN - 1
        }
    );
    // Large weights and a large hidden state: the logits leave |z| < 2^23.
    let big = HeadWeights::new(
        VOCAB,
        HIDDEN,
        format,
        vec![(1 << WEIGHT_BITS) - 1; VOCAB * HIDDEN],
    )
    .unwrap();
    let err = HeadStepWitness::sample(
        &big,
        &tables,
        fp(),
        vec![(1 << HIDDEN_BITS) - 1; HIDDEN],
        Sampler::Greedy,
    )
    .unwrap_err();
    assert!(
        matches!(err, HeadError::LogitOutOfRange { index: 0, .. }),
        "{err}"
    );
    // A token that does not follow.
    let honest = step(&w, 3, Sampler::Greedy);
    let wrong = (honest.statement().token + 1) % VOCAB as u32;
    let err =
        HeadStepWitness::new(&w, &tables, fp(), honest.hidden, wrong, Sampler::Greedy).unwrap_err();
    assert!(
        matches!(err, HeadError::Step(StepError::WrongToken { .. })),
        "{err}"
    );
    // Shapes.
    assert_eq!(
        HeadShape::with_columns(VOCAB, HIDDEN, fp(), 1, 1, HIDDEN + 1).unwrap_err(),
        HeadError::Columns {
            columns: HIDDEN + 1,
            hidden: HIDDEN
        }
    );
    assert!(matches!(
        HeadShape::new(262_144, 128, fp(), 8, 1),
        Err(HeadError::TooLarge(_))
    ));
}

#[test]
fn hidden_commitment_separates_states_and_domains() {
    let format = HeadFormat::default_for(fp());
    let h = hidden(5);
    let c = commit_hidden(format, &h);
    let mut other = h.clone();
    other[HIDDEN - 1] += 1;
    assert_ne!(c, commit_hidden(format, &other));
    assert_ne!(c, commit_hidden(format, &h[..HIDDEN - 1]));
    let other_format = HeadFormat::new(fp(), 10).unwrap();
    assert_ne!(c, commit_hidden(other_format, &h));
    // Not the logit commitment of the same integers.
    assert_ne!(c, crate::commitment::commit_logits(fp(), &h));
    // Packing: ten 25-bit limbs per element, most significant first.
    let packed = pack_hidden(&h);
    assert_eq!(packed.len(), 2);
    let limb = |v: i64| Fp::from((v + (1 << HIDDEN_BITS)) as u64);
    let first = h[..10].iter().fold(Fp::zero(), |acc, &v| {
        acc * Fp::from(1 << HIDDEN_LIMB_BITS) + limb(v)
    });
    assert_eq!(packed[0], first);
}

#[test]
fn logits_are_the_rounded_product_within_the_bound() {
    // Against float64 of the integer head applied to the unquantized hidden state.
    let format = HeadFormat::default_for(fp());
    for seed in 0..8 {
        let w = weights(seed);
        let h_float = random_hidden(HIDDEN, seed + 100);
        let h = format.quantize_hidden(&h_float).unwrap();
        let (z, rem) = w.logits(&h).unwrap();
        let bound = w.logit_error_bound();
        for i in 0..VOCAB {
            let exact: f64 = w
                .row(i)
                .iter()
                .zip(&h_float)
                .map(|(&a, &b)| a as f64 / (format.weight_frac as f64).exp2() * b as f64)
                .sum();
            let proven = z[i] as f64 * fp().unit();
            assert!(
                (proven - exact).abs() <= bound,
                "logit {i}: {proven} vs {exact}, bound {bound}"
            );
            assert!((0..1 << REM_BITS).contains(&rem[i]));
        }
    }
}
