//! `attio-webhooks sign` and `attio-webhooks verify`: Attio's signature on standard input, for
//! debugging a receiver.
//!
//! In: the raw bytes of standard input (nothing is trimmed or re-encoded: the signature covers
//! the exact bytes), a secret from `--secret` or `ATTIO_WEBHOOK_SECRET` (outside production, with
//! neither, the configured one, as `send` does), and for `verify` a signature. Out: `sign` prints the lower-case hex signature; `verify` says valid (exit 0) or
//! invalid (exit 1). Secrets are never printed.

use std::io::Read;
use std::process::ExitCode;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};

use super::secret::{self, SecretSource};
use crate::config::{LoadOptions, Settings};
use crate::signature::{self, SignatureError};

#[derive(Debug, Args)]
pub struct SignArgs {
    /// Signing secret (default: ATTIO_WEBHOOK_SECRET, the first if it lists several; outside
    /// production, the configured secret, as for `send`).
    #[arg(long, value_name = "SECRET")]
    pub(crate) secret: Option<SecretString>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Secret to check against (default: ATTIO_WEBHOOK_SECRET, valid if any listed secret
    /// matches, as in the daemon; outside production, the configured secrets).
    #[arg(long, value_name = "SECRET")]
    pub(crate) secret: Option<SecretString>,

    /// The Attio-Signature header value to check.
    #[arg(long, value_name = "SIGNATURE")]
    pub(crate) signature: String,
}

pub(crate) fn sign(args: SignArgs, options: LoadOptions) -> ExitCode {
    let Some((secrets, source)) = secrets(args.secret, &options) else {
        return ExitCode::from(2);
    };
    let Some(body) = read_stdin() else {
        return ExitCode::from(2);
    };
    if secrets.len() > 1 {
        eprintln!(
            "note: {} lists {} secrets; signing with the first",
            source.describe(),
            secrets.len()
        );
    }
    // `given_or_configured` never returns an empty list.
    let Some(first) = secrets.first() else {
        eprintln!("error: {}", secret::NoSecret);
        return ExitCode::from(2);
    };
    println!("{}", signature::sign(first.expose_secret(), &body));
    ExitCode::SUCCESS
}

pub(crate) fn verify(args: VerifyArgs, options: LoadOptions) -> ExitCode {
    let Some((secrets, source)) = secrets(args.secret, &options) else {
        return ExitCode::from(2);
    };
    let Some(body) = read_stdin() else {
        return ExitCode::from(2);
    };
    match signature::verify(&secrets, Some(args.signature.as_bytes()), body.into()) {
        Ok(verified) => {
            if secrets.len() > 1 {
                println!(
                    "valid: matches secret {} of {} in {}",
                    verified.secret_index() + 1,
                    secrets.len(),
                    source.describe()
                );
            } else {
                println!("valid: matches the secret from {}", source.describe());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("invalid: {}", explain(error, source, secrets.len()));
            ExitCode::from(1)
        }
    }
}

fn explain(error: SignatureError, source: SecretSource, count: usize) -> String {
    match error {
        SignatureError::Mismatch if count > 1 => format!(
            "the signature matches none of the {count} secrets in {}; check the secret and \
             that the body is byte for byte what was signed",
            source.describe()
        ),
        SignatureError::Mismatch => format!(
            "the signature does not match the secret from {}; check the secret and that the \
             body is byte for byte what was signed (no added newline, no re-formatting)",
            source.describe()
        ),
        SignatureError::Malformed => {
            "malformed signature: Attio sends 64 lower-case hex characters".to_string()
        }
        SignatureError::Missing => "no signature given".to_string(),
    }
}

/// The secrets to use, as `send` chooses them; `None` after saying why there are none.
fn secrets(
    flag: Option<SecretString>,
    options: &LoadOptions,
) -> Option<(Vec<SecretString>, SecretSource)> {
    match secret::given_or_configured(flag, || Settings::load_without_secret(options)) {
        Ok(found) => Some(found),
        Err(error) => {
            eprintln!("error: {error}");
            None
        }
    }
}

fn read_stdin() -> Option<Vec<u8>> {
    let mut body = Vec::new();
    match std::io::stdin().lock().read_to_end(&mut body) {
        Ok(_) => Some(body),
        Err(error) => {
            eprintln!("error: cannot read standard input: {error}");
            None
        }
    }
}
