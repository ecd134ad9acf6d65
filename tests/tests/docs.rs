//! docs/api.md stays true: its `curl` commands run, in order, against a
//! fresh server, and each answer matches the ```http block that follows the
//! command: the status, the headers shown, and the body shown (ids,
//! timestamps, positions, keys and references excepted). Its sandbox table
//! and endpoint table are checked against the server too.
//!
//! docs/operations.md's "Command line" section is what `paystream <command> --help`
//! says: every command's options in order, each with its variable and default, and
//! the variables that have no option.
//!
//! The doc is read the way a shell would run it, within a small subset:
//! `export NAME=value` and `NAME=value` lines; `curl` commands (`-s`, `-X`,
//! `-H`, `-d`), possibly piped into `jq -r` with simple paths (`.id`,
//! `.data[].type`, `.a,.b`); `NAME=$(curl ... | jq -r .field)` to keep a
//! value for later commands; `$NAME` and `"$NAME"` expansion; single and
//! double quotes; backslash line continuations. The line starting the server
//! (`cargo run ...`) is skipped: the test starts its own, with the doc's
//! PAYSTREAM_ADMIN_KEY, and points `$API` at it. Anything else in a ```sh
//! block fails the test, so the doc cannot drift into something unchecked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use paystream_tests::help::{help_options, help_text, LEAF_COMMANDS};
use paystream_tests::json::assert_json;
use paystream_tests::routes::ROUTES;
use paystream_tests::{Client, Request, Response, Server};
use serde_json::{json, Value};

fn read_doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// A fenced code block: its info string and text.
struct Block {
    lang: String,
    text: String,
}

fn fenced_blocks(doc: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for line in doc.lines() {
        match (&mut current, line.trim_start().strip_prefix("```")) {
            (None, Some(lang)) => current = Some(Block { lang: lang.trim().to_string(), text: String::new() }),
            (Some(_), Some(_)) => blocks.extend(current.take()),
            (Some(block), None) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(current.is_none(), "unclosed code block in docs/api.md");
    blocks
}

/// Splits a shell block into logical lines: a backslash before a newline
/// continues the line, and quotes may span lines.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\\') if chars.peek() == Some(&'\n') => {
                chars.next();
                line.push(' ');
            }
            (None, '\n') => lines.push(std::mem::take(&mut line)),
            (None, '\'' | '"') => {
                quote = Some(c);
                line.push(c);
            }
            (Some(q), _) if c == q => {
                quote = None;
                line.push(c);
            }
            _ => line.push(c),
        }
    }
    lines.push(line);
    lines.into_iter().map(|l| l.trim().to_string()).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
}

/// Shell words of `line` with variables expanded; an unquoted `|` is a
/// word of its own.
fn words(line: &str, vars: &BTreeMap<String, String>) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let expand = |chars: &mut std::iter::Peekable<std::str::Chars>, out: &mut String| {
        let braced = chars.peek() == Some(&'{');
        if braced {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        if braced {
            assert_eq!(chars.next(), Some('}'), "unclosed ${{ in {line}");
        }
        let value = vars.get(&name).unwrap_or_else(|| panic!("${name} is not set before: {line}"));
        out.push_str(value);
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '|' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
                words.push("|".to_string());
            }
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        '$' => expand(&mut chars, &mut word),
                        c => word.push(c),
                    }
                }
            }
            '$' => {
                in_word = true;
                expand(&mut chars, &mut word);
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// A `curl` command, and the `jq -r` filter its output goes through.
#[derive(Debug)]
struct Curl {
    line: String,
    request: Request,
    jq: Option<String>,
    /// Keep the jq output in this variable (`NAME=$(curl ... | jq -r ...)`).
    assign_to: Option<String>,
}

fn parse_curl(line: &str, words: &[String], api: &str, assign_to: Option<String>) -> Curl {
    let mut pipeline = words.split(|w| w == "|");
    let args = pipeline.next().unwrap();
    let jq = pipeline.next().map(|jq| {
        assert!(jq.len() == 3 && jq[0] == "jq" && jq[1] == "-r", "only `| jq -r FILTER` is understood: {line}");
        jq[2].clone()
    });
    assert!(pipeline.next().is_none(), "one pipe at most: {line}");
    assert_eq!(args[0], "curl", "{line}");
    let (mut method, mut url, mut headers, mut body) = (None, None, Vec::new(), None);
    let mut args = args[1..].iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value: {line}")).clone();
        match arg.as_str() {
            "-s" | "-S" | "-sS" | "--silent" | "--show-error" => {}
            "-X" | "--request" => method = Some(value()),
            "-H" | "--header" => {
                let header = value();
                let (name, value) = header.split_once(':').unwrap_or_else(|| panic!("header {header}: {line}"));
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
            "-d" | "--data" | "--data-raw" => body = Some(value()),
            other if other.starts_with("http") => url = Some(other.to_string()),
            other => panic!("curl option {other} is not understood: {line}"),
        }
    }
    let url = url.unwrap_or_else(|| panic!("no URL: {line}"));
    let path = url.strip_prefix(api).unwrap_or_else(|| panic!("the URL must start with $API: {line}"));
    let method = method.unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.to_string());
    let mut request = Request::new(&method, path);
    for (name, value) in headers {
        request = request.header(&name, &value);
    }
    if let Some(body) = body {
        request = request.body(body.into_bytes());
    }
    Curl { line: line.to_string(), request, jq, assign_to }
}

/// A `jq -r` filter: comma-separated paths of `.field` and `[]` steps.
fn jq(filter: &str, input: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for path in filter.split(',') {
        let mut values = vec![input.clone()];
        let path = path.trim().strip_prefix('.').unwrap_or_else(|| panic!("jq filter {filter}"));
        for step in path.split('.').filter(|s| !s.is_empty()) {
            let (field, iterate) = match step.strip_suffix("[]") {
                Some(field) => (field, true),
                None => (step, false),
            };
            values = values
                .into_iter()
                .map(|v| if field.is_empty() { v } else { v[field].clone() })
                .flat_map(|v| if iterate { v.as_array().cloned().unwrap_or_default() } else { vec![v] })
                .collect();
        }
        out.extend(values.into_iter().map(|v| match v {
            Value::String(s) => s,
            other => other.to_string(),
        }));
    }
    out
}

/// What a ```http block says the answer is.
struct Documented {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

fn parse_documented(text: &str) -> Documented {
    let mut lines = text.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("a response block starts with `HTTP/1.1 <status>`: {status_line}"));
    let mut headers = Vec::new();
    for line in lines.by_ref() {
        if line.trim().is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("header line {line}"));
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Documented { status, headers, body: lines.collect::<Vec<_>>().join("\n").trim().to_string() }
}

/// Keys whose values differ on every run.
fn volatile(key: &str) -> bool {
    key == "id"
        || key.ends_with("_id")
        || key.ends_with("_at")
        || matches!(key, "position" | "key" | "acquirer_reference" | "fingerprint" | "hash" | "prev_hash")
}

/// Whether a line of jq output matches the line shown: equal, or both ids
/// of the same kind (`pay_` and 32 hex digits), which differ on every run.
fn same_line(actual: &str, shown: &str) -> bool {
    let id_kind = |text: &str| {
        text.split_once('_')
            .filter(|(_, hex)| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|(prefix, _)| prefix.to_string())
    };
    actual == shown || id_kind(actual).is_some_and(|kind| id_kind(shown) == Some(kind))
}

/// The documented body as a pattern for [`assert_json`]: volatile values
/// become wildcards.
fn pattern(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if volatile(k) && !v.is_null() { json!("*") } else { pattern(v) };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(pattern).collect()),
        other => other.clone(),
    }
}

fn check_answer(curl: &Curl, response: &Response, documented: &Documented) -> Option<String> {
    assert_eq!(response.status, documented.status, "{}\nanswered {}", curl.line, response.text());
    for (name, value) in &documented.headers {
        assert_eq!(response.header(name), Some(value.as_str()), "header {name} of: {}", curl.line);
    }
    match &curl.jq {
        Some(filter) => {
            let output = jq(filter, &response.json());
            assert!(output.iter().all(|line| line != "null"), "{} gives null: {}", curl.line, response.text());
            if curl.assign_to.is_none() || !documented.body.starts_with('{') {
                let shown: Vec<&str> = documented.body.lines().collect();
                let same = output.len() == shown.len() && output.iter().zip(&shown).all(|(a, s)| same_line(a, s));
                assert!(same, "jq output of: {}\nshown:  {shown:?}\nactual: {output:?}", curl.line);
            } else {
                let shown: Value = serde_json::from_str(&documented.body)
                    .unwrap_or_else(|e| panic!("the answer shown after `{}` is not JSON: {e}", curl.line));
                assert_json(&response.json(), &pattern(&shown));
            }
            Some(output.join("\n"))
        }
        None => {
            let shown: Value = serde_json::from_str(&documented.body)
                .unwrap_or_else(|e| panic!("the answer shown after `{}` is not JSON: {e}", curl.line));
            assert_json(&response.json(), &pattern(&shown));
            None
        }
    }
}

/// Runs every ```sh block in order; returns how many curl commands ran.
fn run_walkthrough(doc: &str) -> usize {
    let blocks = fenced_blocks(doc);
    let admin_key = blocks
        .iter()
        .filter(|b| b.lang == "sh")
        .flat_map(|b| logical_lines(&b.text))
        .find_map(|line| line.strip_prefix("export PAYSTREAM_ADMIN_KEY=").map(str::to_string))
        .expect("the doc sets PAYSTREAM_ADMIN_KEY");
    let server = Server::start_with_admin_key(&admin_key);
    let api = format!("http://{}", server.addr);
    let mut vars = BTreeMap::from([("API".to_string(), api.clone())]);
    let fixed = ["API"];

    let mut pending: Vec<Curl> = Vec::new();
    let mut ran = 0;
    for block in &blocks {
        match block.lang.as_str() {
            "sh" => {
                assert!(pending.is_empty(), "no answer shown for: {}", pending[0].line);
                for line in logical_lines(&block.text) {
                    let statement = line.strip_prefix("export ").unwrap_or(&line);
                    if statement.starts_with("cargo run") || statement.starts_with("paystream serve") {
                        continue;
                    }
                    let assignment = statement.split_once('=').filter(|(name, _)| {
                        !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                    });
                    match assignment {
                        Some((name, value)) if value.starts_with("$(") => {
                            let inner = value.strip_prefix("$(").and_then(|v| v.strip_suffix(')')).expect("$( )");
                            let words = words(inner, &vars);
                            let curl = parse_curl(&line, &words, &api, Some(name.to_string()));
                            assert!(curl.jq.is_some(), "keep a value with `| jq -r`: {line}");
                            pending.push(curl);
                        }
                        Some((name, value)) => {
                            if !fixed.contains(&name) {
                                let value = words(value, &vars).concat();
                                vars.insert(name.to_string(), value);
                            }
                        }
                        None => {
                            let words = words(statement, &vars);
                            assert_eq!(words.first().map(String::as_str), Some("curl"), "not understood: {line}");
                            pending.push(parse_curl(&line, &words, &api, None));
                        }
                    }
                }
                // A command runs when its answer block is read, and only then
                // sets its variable: one command per block keeps that simple.
                assert!(pending.len() <= 1, "one curl command per ```sh block: {}", pending[1].line);
            }
            "http" => {
                assert!(!pending.is_empty(), "an answer block without a command before it:\n{}", block.text);
                let curl = pending.remove(0);
                let response = curl.request.send(server.addr);
                let kept = check_answer(&curl, &response, &parse_documented(&block.text));
                if let (Some(name), Some(value)) = (&curl.assign_to, kept) {
                    vars.insert(name.clone(), value);
                }
                ran += 1;
            }
            _ => {}
        }
    }
    assert!(pending.is_empty(), "no answer shown for: {}", pending[0].line);
    ran
}

#[test]
fn the_curl_walkthrough_gives_the_documented_answers() {
    let ran = run_walkthrough(&read_doc());
    assert!(ran >= 15, "the walk-through ran {ran} requests");
}

/// The rows of the markdown table whose header row is `header`.
fn table(doc: &str, header: &[&str]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut inside = false;
    for line in doc.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            if inside {
                break;
            }
            continue;
        }
        let cells: Vec<String> = line.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect();
        if !inside {
            inside = cells == header;
            continue;
        }
        if !cells[0].starts_with("---") {
            rows.push(cells);
        }
    }
    assert!(!rows.is_empty(), "no table headed {header:?}");
    rows
}

/// The `backticked` parts of a cell.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

#[test]
fn the_sandbox_table_is_what_the_sandbox_does() {
    let doc = read_doc();
    let server = Server::start();
    let merchant = paystream_tests::fixtures::onboard(&server, "Sandbox Doc", "B");
    let mut checked = 0;
    for row in table(&doc, &["Method", "Instrument", "Outcome"]) {
        let (methods, instrument, outcome) = (code_spans(&row[0]), &row[1], &row[2]);
        let expected = match outcome.strip_prefix("declined, ") {
            Some(code) => ("declined", Some(code.trim_matches('`').to_string())),
            None => {
                assert_eq!(outcome, "approved", "outcome cell");
                ("captured", None)
            }
        };
        for method in &methods {
            let instruments: Vec<Value> = if method == "card" {
                code_spans(instrument).iter().map(|number| paystream_tests::fixtures::card_method(number)).collect()
            } else {
                let id = if code_spans(instrument).contains(&"decline".to_string()) {
                    "decline_doc_1"
                } else {
                    "doc_account_1"
                };
                vec![match method.as_str() {
                    "wallet" => json!({"type": "wallet", "wallet": {"provider": "wechat_pay", "account_id": id}}),
                    "bank_transfer" => json!({"type": "bank_transfer", "bank_transfer":
                        {"bank_code": "ICBKCNBJ", "account_holder": "Li Wei", "account_id": id}}),
                    "qr_code" => json!({"type": "qr_code", "qr_code": {"scheme": "alipay", "payer_id": id}}),
                    "nfc" => json!({"type": "nfc", "nfc": {"device_token": id}}),
                    other => panic!("unknown method {other} in the sandbox table"),
                }]
            };
            assert!(!instruments.is_empty(), "row without instruments: {row:?}");
            for instrument in instruments {
                let body = paystream_tests::fixtures::payment_body(1_500, "automatic", instrument.clone());
                let payment = merchant.client.post("/v1/payments", &body).expect(201);
                let actual =
                    (payment["status"].as_str().unwrap(), payment["decline_code"].as_str().map(str::to_string));
                assert_eq!(actual, (expected.0, expected.1.clone()), "{instrument}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 12, "checked {checked} instruments");
}

#[test]
fn the_endpoint_table_matches_the_server() {
    let doc = read_doc();
    let server = Server::start();
    let openapi = Client::new(server.addr, None).get("/v1/openapi.json").expect(200);
    let mut documented = BTreeSet::new();
    for row in table(&doc, &["Method", "Path", "Roles", "Success"]) {
        let method = row[0].trim_matches('`').to_string();
        let path = row[1].trim_matches('`').to_string();
        let operation = &openapi["paths"][&path][method.to_lowercase()];
        assert!(operation.is_object(), "{method} {path} is not served");
        assert_eq!(operation["description"], format!("Roles: {}.", row[2]), "roles of {method} {path}");
        let success = operation["responses"].as_object().unwrap().keys().find(|s| s.starts_with('2')).cloned();
        assert_eq!(success.as_deref(), Some(row[3].as_str()), "success status of {method} {path}");
        documented.insert((method, path));
    }
    let routes: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, routes, "docs/api.md lists every route");
}

/// The `## Command line` section of docs/operations.md (other sections follow it).
fn command_line_section() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md");
    let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let section: Vec<&str> = doc
        .lines()
        .skip_while(|line| line.trim() != "## Command line")
        .enumerate()
        .take_while(|(i, line)| *i == 0 || !line.starts_with("## "))
        .map(|(_, line)| line)
        .collect();
    assert!(!section.is_empty(), "docs/operations.md has no `## Command line` section");
    section.join("\n")
}

/// The option tables of the section, by command (the words after `paystream` in
/// the `### ` heading above each).
fn option_tables(section: &str) -> BTreeMap<String, Vec<Vec<String>>> {
    let header = ["Option", "Variable", "Default", "Meaning"];
    let mut tables: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    let mut command: Option<String> = None;
    let mut inside = false;
    for line in section.lines().map(str::trim) {
        if let Some(heading) = line.strip_prefix("### ") {
            command = code_spans(heading).first().and_then(|c| c.strip_prefix("paystream ").map(str::to_string));
            inside = false;
            continue;
        }
        if !line.starts_with('|') {
            inside = false;
            continue;
        }
        let cells: Vec<String> = line.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect();
        if cells == header {
            let command = command.clone().expect("an option table under a `paystream ...` heading");
            assert!(tables.insert(command.clone(), Vec::new()).is_none(), "two option tables for {command}");
            inside = true;
        } else if inside && !cells[0].starts_with("---") {
            let command = command.as_ref().expect("inside a command's table");
            tables.get_mut(command).expect("the table was started").push(cells);
        }
    }
    tables
}

#[test]
fn the_command_line_section_is_what_help_says() {
    let section = command_line_section();
    let tables = option_tables(&section);
    for command in LEAF_COMMANDS {
        let name = command.join(" ");
        let rows =
            tables.get(&name).unwrap_or_else(|| panic!("docs/operations.md: no option table for paystream {name}"));
        let options = help_options(command);
        let documented: Vec<String> = rows
            .iter()
            .map(|row| code_spans(&row[0]).first().and_then(|c| c.split_whitespace().next()).unwrap_or("").to_string())
            .collect();
        let helped: Vec<String> = options.iter().map(|o| o.long.clone()).collect();
        assert_eq!(documented, helped, "the options of paystream {name}, in --help's order");
        for (row, option) in rows.iter().zip(&options) {
            assert_eq!(code_spans(&row[1]), Vec::from_iter(option.env.clone()), "variable of {name} {}", option.long);
            // The default `--help` shows, if any, is the cell's (its backticks aside).
            if let Some(default) = &option.default {
                assert_eq!(row[2].replace('`', ""), *default, "default of {name} {}", option.long);
            }
            assert!(!row[3].is_empty(), "meaning of {name} {}", option.long);
        }
    }
    assert_eq!(tables.len(), LEAF_COMMANDS.len(), "option tables for {:?}", tables.keys().collect::<Vec<_>>());

    // The commands table names every command.
    let commands: Vec<String> =
        table(&section, &["Command", "What it does"]).iter().map(|row| code_spans(&row[0]).concat()).collect();
    let expected: Vec<String> = LEAF_COMMANDS.iter().map(|c| format!("paystream {}", c.join(" "))).collect();
    assert_eq!(commands, expected);

    // The variables without an option, described by `serve --help` too.
    let serve_help = help_text(&["serve"], "--help");
    let variables: Vec<String> =
        table(&section, &["Variable", "Default", "Meaning"]).iter().map(|row| code_spans(&row[0]).concat()).collect();
    assert_eq!(
        variables,
        ["PAYSTREAM_ADMIN_KEY", "PAYSTREAM_FINGERPRINT_KEY", "PAYSTREAM_LOG", "PAYSTREAM_LOG_FORMAT"]
    );
    for variable in &variables {
        assert!(serve_help.contains(variable.as_str()), "serve --help describes {variable}");
    }
}
