//! `neurograph repl` through a pseudo-terminal (rexpect): the commands, line
//! editing and history, clear messages for bad input, Ctrl-C and Ctrl-D, and
//! a WAL closed on /quit and resumed by the next session.
#![cfg(all(unix, feature = "cli"))]

use rexpect::session::{PtySession, spawn_command};
use std::path::Path;
use std::process::Command;

const PROMPT: &str = "neurograph> ";

fn repl(home: &Path, args: &[&str]) -> PtySession {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_neurograph"));
    cmd.arg("repl")
        .args(args)
        .env("TERM", "xterm")
        .env("HOME", home)
        .env("NEUROGRAPH_LOG", "error");
    let mut p = spawn_command(cmd, Some(60_000)).expect("spawn the repl");
    p.exp_string("NeuroGraph repl:").unwrap();
    p.exp_string(PROMPT).unwrap();
    p
}

/// Sends `line` and returns the output up to the next prompt.
fn ask(p: &mut PtySession, line: &str) -> String {
    p.send_line(line).unwrap();
    // The editor redraws the line it read; the answer follows its newline.
    p.exp_string("\n").unwrap();
    p.exp_string(PROMPT).unwrap()
}

fn quit(mut p: PtySession) -> String {
    p.send_line("/quit").unwrap();
    let rest = p.exp_eof().unwrap();
    match p.process().wait().unwrap() {
        rexpect::process::WaitStatus::Exited(_, code) => assert_eq!(code, 0, "{rest}"),
        other => panic!("{other:?}: {rest}"),
    }
    rest
}

#[test]
fn the_commands_answer_and_bad_input_gets_a_clear_message() {
    let home = tempfile::tempdir().unwrap();
    let mut p = repl(
        home.path(),
        &["--scenario", "clusters", "--tokens", "500", "--seed", "3"],
    );
    let help = ask(&mut p, "/help");
    for c in [
        "/status", "/stats", "/step", "/query", "/spawn", "/link", "/save", "/quit",
    ] {
        assert!(help.contains(c), "{c} missing from /help: {help}");
    }
    assert!(ask(&mut p, "/status").contains("tick 0  tokens 500"));
    let stepped = ask(&mut p, "/step 20");
    assert!(
        stepped.contains("ran 20 ticks") && stepped.contains("tick 20"),
        "{stepped}"
    );
    assert!(ask(&mut p, "/stats").contains("ticks run 20"));
    // The 3 nearest tokens of a point, exact: the token at the point first.
    let spawned = ask(&mut p, "/spawn 9 9 9 9 9 9 9 9 charge=0.5");
    assert!(spawned.contains("spawned #500"), "{spawned}");
    let q = ask(&mut p, "/query 9 9 9 9 9 9 9 9 k=3");
    assert!(
        q.contains("3 tokens") && q.contains("#500  distance 0.00000"),
        "{q}"
    );
    let r = ask(&mut p, "/query 9 9 9 9 9 9 9 9 r=0.5");
    assert!(r.contains("1 tokens"), "{r}");
    assert!(ask(&mut p, "/link 500 1 weight=0.5").contains("linked #500 and #1"));
    assert!(ask(&mut p, "/token 500").contains("charge 0.5"));
    // Bad input: the value and the limit, nothing applied.
    let bad = ask(&mut p, "/spawn 1 2 3");
    assert!(
        bad.contains("error: a point needs 8 coordinates; 3 given"),
        "{bad}"
    );
    let nan = ask(&mut p, "/spawn 0 0 0 0 0 0 0 0 charge=nan");
    assert!(
        nan.contains("error: charge = NaN: must be a finite number in [-1, 1]"),
        "{nan}"
    );
    assert!(ask(&mut p, "/link 1 99999").contains("error: unknown token #99999"));
    assert!(
        ask(&mut p, "/query 0 0 0 0 0 0 0 x")
            .contains("error: coordinate 7: \"x\" is not a valid number")
    );
    assert!(ask(&mut p, "/query 0 0 0 0 0 0 0 0 r=-1").contains("error: radius = -1"));
    assert!(ask(&mut p, "/step many").contains("error: N: \"many\" is not a valid number"));
    assert!(ask(&mut p, "/frobnicate").contains("error: unknown command /frobnicate"));
    assert!(ask(&mut p, "hello").contains("error: commands start with /"));
    assert!(ask(&mut p, "/status").contains("tick 20  tokens 501  links"));
    let csv = home.path().join("tokens.csv");
    let saved = ask(&mut p, &format!("/save {}", csv.display()));
    assert!(saved.contains("wrote 501 tokens"), "{saved}");
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 502);
    let end = quit(p);
    assert!(end.contains("closed at tick 20"), "{end}");
}

#[test]
fn history_line_editing_ctrl_c_and_ctrl_d() {
    let home = tempfile::tempdir().unwrap();
    let mut p = repl(home.path(), &["--scenario", "uniform", "--tokens", "300"]);
    ask(&mut p, "/step 2");
    // Up arrow brings the last line back; editing it (backspace, a new digit)
    // runs the edited line.
    p.send("\x1b[A").unwrap();
    p.send("\x7f5\r").unwrap();
    p.flush().unwrap();
    // (Each edit redraws the prompt and the line: wait for the answer itself.)
    p.exp_string("ran 5 ticks").unwrap();
    p.exp_string("; tick 7").unwrap();
    p.exp_string(PROMPT).unwrap();
    // Ctrl-C at the prompt does not end the session.
    p.send_control('c').unwrap();
    p.exp_string("Ctrl-C").unwrap();
    p.exp_string(PROMPT).unwrap();
    assert!(ask(&mut p, "/status").contains("tick 7"));
    // Ctrl-D on an empty line leaves, saving the history.
    p.send_control('d').unwrap();
    let rest = p.exp_eof().unwrap();
    assert!(rest.contains("closed at tick 7"), "{rest}");
    let history = std::fs::read_to_string(home.path().join(".neurograph_history")).unwrap();
    assert!(
        history.contains("/step 2") && history.contains("/step 5"),
        "{history}"
    );
    // The next session starts with that history.
    let mut p = repl(home.path(), &["--scenario", "uniform", "--tokens", "300"]);
    p.send("\x1b[A\x1b[A\r").unwrap();
    p.flush().unwrap();
    p.exp_string("ran 5 ticks").unwrap();
    p.exp_string(PROMPT).unwrap();
    quit(p);
}

#[test]
fn a_wal_is_closed_on_quit_and_resumed() {
    let home = tempfile::tempdir().unwrap();
    let wal = home.path().join("wal");
    let w = wal.to_str().unwrap();
    let args = [
        "--scenario",
        "clusters",
        "--tokens",
        "400",
        "--wal",
        w,
        "--durability",
        "sync",
    ];
    let mut p = repl(home.path(), &args);
    ask(&mut p, "/step 6");
    ask(&mut p, "/spawn 1 1 1 1 1 1 1 1");
    ask(&mut p, "/step 1");
    let status = ask(&mut p, "/status");
    assert!(
        status.contains("WAL sync: 7 records, durable tick 7"),
        "{status}"
    );
    let end = quit(p);
    assert!(
        end.contains("closed at tick 7") && end.contains("WAL closed (sync)"),
        "{end}"
    );
    let mut p = repl(home.path(), &args);
    let status = ask(&mut p, "/status");
    assert!(status.contains("tick 7  tokens 401"), "{status}");
    // A command right before /quit is journaled with one more tick, not lost.
    ask(&mut p, "/spawn 2 2 2 2 2 2 2 2");
    // /save may not overwrite what the session reads.
    let refused = ask(&mut p, &format!("/save {}/x.csv", w));
    assert!(refused.contains("which this session reads"), "{refused}");
    let end = quit(p);
    assert!(
        end.contains("journaled 1 pending command(s) with one more tick (tick 8)"),
        "{end}"
    );
    let mut p = repl(home.path(), &args);
    assert!(ask(&mut p, "/status").contains("tick 8  tokens 402"));
    // k is bounded, and a huge k is not an allocation.
    assert!(ask(&mut p, "/query 0 0 0 0 0 0 0 0 k=4294967296").contains("error: k = "));
    assert!(ask(&mut p, "/query 0 0 0 0 0 0 0 0 k=4000000000").contains("402 tokens"));
    assert!(ask(&mut p, "/query 2e19 0 0 0 0 0 0 0 r=1").contains("error: point[0] = "));
    quit(p);
}

#[test]
fn history_is_kept_only_in_a_regular_file() {
    let home = tempfile::tempdir().unwrap();
    let target = home.path().join("target-file");
    std::fs::write(&target, "").unwrap();
    let link = home.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let mut p = repl(
        home.path(),
        &["--tokens", "100", "--history", link.to_str().unwrap()],
    );
    ask(&mut p, "/status");
    quit(p);
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "",
        "a symlinked history is not written"
    );
}

#[test]
fn a_bad_start_is_an_error_not_a_prompt() {
    let out = Command::new(env!("CARGO_BIN_EXE_neurograph"))
        .args(["repl", "--scenario", "no-such"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such"), "{err}");
}

#[test]
fn flags_override_the_config_file_as_for_run() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.toml");
    std::fs::write(&config, "input = \"elsewhere.csv\"\nseed = 9\n").unwrap();
    // --scenario and --tokens replace the file's input, as `run` does.
    let mut child = Command::new(env!("CARGO_BIN_EXE_neurograph"))
        .args([
            "repl",
            "--config",
            config.to_str().unwrap(),
            "--scenario",
            "uniform",
            "--tokens",
            "150",
        ])
        .env("HOME", dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stdin is not a terminal: lines are read plainly, with no prompt.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"/status\n/quit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("tick 0  tokens 150"), "{text}");
}
