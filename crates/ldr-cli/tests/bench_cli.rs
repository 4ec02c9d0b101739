//! `ldr bench` through the binary: the command-line contract (`--rows`, `--duration`,
//! `--steady-rate` lists, `--out`, `--mode`), the files it writes, `--from-json`, and refusing nonsense.
//! The PostgreSQL and RocksDB phases run for real at a tiny size (`--skip-ldr`); the ldr
//! phases are covered end to end by ldr-sim's `tests/bench.rs`.

use std::process::{Command, Stdio};

fn ldr(args: &[&str]) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_ldr"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run ldr");
    eprintln!(
        "$ ldr {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn files_with(dir: &std::path::Path, extension: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .expect("read out dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == extension))
        .collect()
}

#[test]
fn bench_command_contract() {
    let out = std::env::temp_dir().join(format!("ldr-bench-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let out_flag = format!("--out={}", out.display());
    let run = ldr(&[
        "bench",
        "--rows=2000",
        "--duration=3",
        "--steady-rate=200,300",
        &out_flag,
        "--skip-ldr",
        "--quiet",
        "--rocksdb-keys=20000",
        "--seed=5",
        "--mode=both",
    ]);
    assert!(run.status.success());
    let table = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(table.contains("steady @200 rows/s") && table.contains("steady @300 rows/s"));
    assert!(table.contains("status: ok"), "{table}");
    let json_files = files_with(&out, "json");
    assert_eq!(json_files.len(), 1, "one report per run");
    assert_eq!(files_with(&out, "svg").len(), 1, "and its plot");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_files[0]).expect("read report"))
            .expect("JSON report");
    assert_eq!(report["config"]["rows"], 2000);
    assert_eq!(report["config"]["duration_s"], 3.0);
    assert_eq!(report["config"]["seed"], 5);
    assert_eq!(report["steady"]["rates"].as_array().map(Vec::len), Some(2));
    assert_eq!(report["steady"]["rate_rows_per_s"], 200);
    assert!(report["catchup"]["postgres_rows_per_s"].as_f64() > Some(0.0));
    assert!(report["rocksdb"]["put_per_s"].as_f64() > Some(0.0));
    assert!(report["machine"]["cores"].as_u64() >= Some(1));
    // Without ldr no apply mode runs, whatever --mode says.
    assert_eq!(report["config"]["ldr_modes"], serde_json::json!([]));
    assert_eq!(report["ldr_modes"], serde_json::json!([]));

    // The table and the plot again from the saved report.
    std::fs::remove_file(json_files[0].with_extension("svg")).expect("remove plot");
    let replot = ldr(&["bench", &format!("--from-json={}", json_files[0].display())]);
    assert!(replot.status.success());
    assert!(String::from_utf8_lossy(&replot.stdout).contains("steady @300 rows/s"));
    assert!(json_files[0].with_extension("svg").is_file());

    // Nonsense is refused with a message, before anything starts.
    for bad in [["bench", "--nodes=0"], ["bench", "--steady-rate=0"]] {
        let refused = ldr(&bad);
        assert!(!refused.status.success());
        assert!(String::from_utf8_lossy(&refused.stderr).contains("invalid argument"));
    }
    let refused = ldr(&["bench", "--mode=fast"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("invalid value 'fast' for '--mode <MODE>'")
            && stderr.contains("immediate, validated, both"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
