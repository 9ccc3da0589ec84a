//! The optimistic path end to end on the tiny random Gemma 3 (two signing
//! nodes on loopback): the cheat suite's detection table, a thousand honest
//! tokens without a false rejection, and fraud proofs that stand on their
//! own — and fail once anything in them changes.

use harness::cheats::{run_suite, Cheat, SuiteOptions, TINY_SPLIT};
use verifier::ParamsCache;

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("zkinfer-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn every_cheat_is_caught_and_no_honest_token_is_rejected() {
    let dir = scratch("cheats");
    let options = SuiteOptions {
        dir: dir.clone(),
        model: None,
        params_dir: ParamsCache::default_dir(),
        honest_tokens: 1_000,
        tokens_per_run: 100,
    };
    let start = std::time::Instant::now();
    let report = run_suite(&options, |step| {
        eprintln!("{:>6.1} s  {step}", start.elapsed().as_secs_f64())
    })
    .expect("suite");
    println!("{}", report.table());
    assert_eq!(report.rows.len(), Cheat::ALL.len());
    for (cheat, row) in Cheat::ALL.iter().zip(&report.rows) {
        assert_eq!(row.cheat, cheat.name());
        assert!(
            row.caught.any(),
            "{} was not caught: {:?}",
            row.cheat,
            row.caught
        );
        if let Some(expected) = cheat.expected_first_bad(TINY_SPLIT) {
            assert_eq!(row.caught.first_bad, Some(expected), "{}", row.cheat);
        }
    }
    let honest = &report.honest;
    assert!(honest.tokens >= 1_000, "{honest:?}");
    assert_eq!(honest.rejected_hops, 0, "{honest:?}");
    assert_eq!(honest.ambiguous_hops, 0, "{honest:?}");
    assert_eq!(honest.failed_receipt_checks, 0, "{honest:?}");
    assert_eq!(honest.rejected_proofs, 0, "{honest:?}");
    let _ = std::fs::remove_dir_all(dir);
}
