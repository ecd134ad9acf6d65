//! What `paystream <command> --help` says: its options, each with the
//! environment variable and the default shown beside it. The command line's
//! tests (tests/tests/cli.rs) and the docs' (tests/tests/docs.rs) read it.

use crate::server::paystream_command;

/// Every command, as its words after `paystream`.
pub const COMMANDS: &[&[&str]] =
    &[&[], &["serve"], &["verify"], &["replay"], &["export"], &["bench"], &["bench", "store"], &["bench", "http"]];

/// The commands that run something (not a group of commands).
pub const LEAF_COMMANDS: &[&[&str]] =
    &[&["serve"], &["verify"], &["replay"], &["export"], &["bench", "store"], &["bench", "http"]];

/// One option of a `--help`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelpOption {
    /// `--data`.
    pub long: String,
    /// `PAYSTREAM_DATA`, if the option has a variable.
    pub env: Option<String>,
    /// `./data`, if clap shows a default.
    pub default: Option<String>,
    /// Everything the help says about the option.
    pub text: String,
}

/// The output of `paystream <command> <flag>` (`--help`, `-h`), which must succeed.
pub fn help_text(command: &[&str], flag: &str) -> String {
    let output = paystream_command().args(command).arg(flag).output().expect("run paystream");
    assert!(
        output.status.success(),
        "paystream {command:?} {flag} exited {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 help")
}

/// The options `paystream <command> --help` lists, `--help` and `--version` excepted.
pub fn help_options(command: &[&str]) -> Vec<HelpOption> {
    let help = help_text(command, "--help");
    let mut entries: Vec<String> = Vec::new();
    for line in help.lines().skip_while(|line| line.trim() != "Options:").skip(1) {
        if !line.is_empty() && !line.starts_with(' ') {
            break;
        }
        if line.trim_start().starts_with('-') {
            entries.push(String::new());
        }
        if let Some(entry) = entries.last_mut() {
            entry.push_str(line.trim());
            entry.push(' ');
        }
    }
    let between = |text: &str, start: &str, ends: &[char]| {
        text.split_once(start).and_then(|(_, rest)| rest.split_once(ends).map(|(value, _)| value.to_string()))
    };
    entries
        .into_iter()
        .filter_map(|text| {
            let long = text.split([' ', ',']).find(|word| word.starts_with("--"))?.to_string();
            let env = between(&text, "[env: ", &['=', ']']);
            let default = between(&text, "[default: ", &[']']);
            Some(HelpOption { long, env, default, text })
        })
        .filter(|option| option.long != "--help" && option.long != "--version")
        .collect()
}

/// The one naming rule of the variables: `PAYSTREAM_` (`PAYSTREAM_BENCH_` for the bench
/// commands) and the option's name in capitals, dashes as underscores.
pub fn variable_of(command: &[&str], long: &str) -> String {
    let prefix = if command.first() == Some(&"bench") { "PAYSTREAM_BENCH_" } else { "PAYSTREAM_" };
    format!("{prefix}{}", long.trim_start_matches("--").to_ascii_uppercase().replace('-', "_"))
}
