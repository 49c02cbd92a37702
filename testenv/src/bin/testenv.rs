//! `testenv run -- <command...>`: one real environment for a whole test run.
//! `testenv up`: start one and keep it until interrupted (for manual use).
//! `testenv report DIR OUT`: write the reliability report (`RELIABILITY.md`)
//! from what the tests recorded in DIR.
#![forbid(unsafe_code)]

use std::process::{Command, ExitCode};

use dbqo_testenv::{reliability, run_dir, TestEnv, ENV_VAR};

fn usage() -> ExitCode {
    eprintln!(
        "usage: testenv run -- <command> [args...]\n       testenv up\n       testenv report <record-dir> <output.md>"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, command) = match args.split_first() {
        Some((m, rest)) if m == "run" => {
            let rest = rest.strip_prefix(&["--".to_string()]).unwrap_or(rest);
            if rest.is_empty() {
                return usage();
            }
            ("run", rest.to_vec())
        }
        Some((m, [])) if m == "up" => ("up", Vec::new()),
        Some((m, [dir, out])) if m == "report" => return report(dir.as_ref(), out.as_ref()),
        _ => return usage(),
    };

    let dir = run_dir();
    let started = std::time::Instant::now();
    let env = match TestEnv::start(&dir) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("testenv: cannot start the environment: {e}");
            return ExitCode::from(1);
        }
    };
    let env_file = dir.join("env.json");
    let json = serde_json::to_string_pretty(&env.info).expect("environment info serialises");
    if let Err(e) = std::fs::write(&env_file, json) {
        eprintln!("testenv: write {}: {e}", env_file.display());
        return ExitCode::from(1);
    }
    eprintln!(
        "testenv: control plane {} and PostgreSQL 127.0.0.1:{} ready in {:.1}s (logs in {})",
        env.info.control_plane.server,
        env.info.postgres.port,
        started.elapsed().as_secs_f64(),
        dir.display()
    );

    if mode == "up" {
        println!("export {ENV_VAR}={}", env_file.display());
        println!("export KUBECONFIG={}", env.info.control_plane.kubeconfig.display());
        println!("# PostgreSQL: {}", env.info.postgres.url("postgres"));
        // Parked until a signal ends the process; children die with it.
        loop {
            std::thread::park();
        }
    }

    let status = Command::new(&command[0])
        .args(&command[1..])
        .env(ENV_VAR, &env_file)
        .env("KUBECONFIG", &env.info.control_plane.kubeconfig)
        .status();
    drop(env);
    let _ = std::fs::remove_dir_all(&dir);
    match status {
        Ok(s) => ExitCode::from(s.code().map_or(1, |c| u8::try_from(c).unwrap_or(1))),
        Err(e) => {
            eprintln!("testenv: cannot run {}: {e}", command[0]);
            ExitCode::from(1)
        }
    }
}

/// Writes the reliability report of the records in `dir` to `out`; a trial
/// the run did not record is taken from the kept records, if any.
fn report(dir: &std::path::Path, out: &std::path::Path) -> ExitCode {
    let mut outcomes = reliability::recorded(std::path::Path::new(reliability::KEPT_RECORDS));
    let ran = reliability::recorded(dir);
    let count = ran.len();
    outcomes.extend(ran);
    let text = reliability::report(&outcomes, &reliability::machine(), &reliability::today());
    match std::fs::write(out, text) {
        Ok(()) => {
            eprintln!("testenv: {count} trials recorded, report in {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("testenv: write {}: {e}", out.display());
            ExitCode::from(1)
        }
    }
}
