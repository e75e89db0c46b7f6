//! Redaction: what of a setting may be shown. Settings are printed (`check-config`), quoted in
//! errors and logged at start; a secret's text must never be part of any of that.
//!
//! In: URLs that may carry credentials, secrets, and the messages of the `config` crate and
//! serde (which quote the values they refuse). Out: the same with every credential replaced by a
//! marker. A leaf: the modules that own a settings type (`config`, `sinks`, `mirror`)
//! and the ones that log a URL all use it, and it uses none of them.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::Serializer;

/// A message of the `config` crate or serde without the values it quotes (`string "..."`
/// becomes `a string`) and without the source lines a TOML syntax error shows: either may be a
/// secret.
pub(crate) fn redact_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for line in message.lines() {
        // The source excerpt of a TOML syntax error: `  |`, `2 | secrets = [...`, `  |   ^`.
        let gutter = line.trim_start();
        let digits = gutter.trim_start_matches(|c: char| c.is_ascii_digit());
        if digits.trim_start().starts_with('|') {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        let mut rest = line;
        while let Some(start) = rest.find("string \"") {
            out.push_str(&rest[..start]);
            out.push_str("a string");
            // Skip the quoted value, which serde prints with Rust escapes.
            let value = &rest[start + "string \"".len()..];
            let mut end = value.len();
            let mut escaped = false;
            for (index, c) in value.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        end = index + 1;
                        break;
                    }
                    _ => {}
                }
            }
            rest = &value[end.min(value.len())..];
        }
        out.push_str(rest);
    }
    out
}

/// Serialises the webhook secrets as a count only. `Serialize` exists so that `check-config` can
/// print the settings; a secret's text must never be part of that output.
pub(crate) fn redact_secrets<S: Serializer>(
    secrets: &[SecretString],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let count = secrets.len();
    let noun = if count == 1 { "secret" } else { "secrets" };
    serializer.serialize_str(&format!("[redacted: {count} {noun}]"))
}

/// Serialises a secret that may be absent (a URL can carry a password) as a marker.
pub(crate) fn redact_optional_secret<S: Serializer>(
    secret: &Option<SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => serializer.serialize_str("[redacted]"),
        None => serializer.serialize_none(),
    }
}

/// A URL as written, with its user info (`user:password@`) and the value of every query
/// parameter replaced by `redacted`, for error messages and for showing settings. Works on text
/// that is not a valid URL too (`http//user:pw@host/x?token=T`, a scheme typo): the user still
/// sees what they wrote, minus anything that may be a credential.
pub(crate) fn redacted_url(url: &str) -> String {
    // The authority starts after `//` when there is one (also after a mistyped scheme), else at
    // the start. It ends at the first `/` after that; a password is not supposed to hold `?`, `#`
    // or `@`, but when it does unescaped, the last `@` before that `/` still ends the user info.
    let authority_start = url.find("//").map_or(0, |index| index + 2);
    let (scheme, rest) = url.split_at(authority_start);
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => format!("redacted{}", &rest[at..]),
        None => rest.to_string(),
    };
    let (before_fragment, fragment) = match rest.find('#') {
        Some(index) => rest.split_at(index),
        None => (rest.as_str(), ""),
    };
    let (path, query) = match before_fragment.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (before_fragment, None),
    };
    let mut out = format!("{scheme}{path}");
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) => format!("{name}=redacted"),
                None if pair.is_empty() => String::new(),
                // `?TOKEN` alone may be the credential itself.
                None => "redacted".to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out.push_str(fragment);
    out
}

pub(crate) fn redact_url_credentials<S: Serializer>(
    url: &str,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redacted_url(url))
}

/// Serialises a map of secrets (an HTTP sink's headers) with its keys and redacted values.
pub(crate) fn redact_secret_values<S: Serializer>(
    map: &BTreeMap<String, SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(map.keys().map(|key| (key, "[redacted]")))
}
