//! `millrace token`: mints a bearer token for the gateway, signed with the
//! same HS256 key the gateway verifies with (`auth.hs256_secret`).
//!
//! The key is read from an environment variable, never from the command
//! line (which shell history and `ps` show), so that
//! `kubectl exec deploy/millrace-gateway -- millrace token --topics '*'`
//! signs with the key the running gateway has. Tokens for real clients come
//! from your identity provider; this is for operators, scripts and demos.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde::Serialize;

/// The gateway refuses shorter HS256 keys (`auth.hs256_secret`).
const MIN_SECRET_BYTES: usize = 32;

/// `millrace token` options.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Topics the token may read (`*`: every bridged topic); repeat the
    /// flag or separate with commas.
    #[arg(long, value_delimiter = ',', required = true)]
    topics: Vec<String>,
    /// Limit every topic to keys starting with one of these prefixes.
    #[arg(long = "key-prefix", value_delimiter = ',')]
    key_prefixes: Vec<String>,
    /// How long the token is valid, e.g. `15m`, `12h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Whom the token is for (`sub`).
    #[arg(long, default_value = "millrace-token")]
    subject: String,
    /// `iss`, when the gateway checks `auth.issuer`.
    #[arg(long)]
    issuer: Option<String>,
    /// `aud`, when the gateway checks `auth.audience`.
    #[arg(long)]
    audience: Option<String>,
    /// The environment variable that holds the HS256 key.
    #[arg(long, default_value = "MILLRACE_GATEWAY_SECRET")]
    secret_env: String,
}

/// The claims the gateway reads (see docs/src/gateway.md, *Tokens*).
#[derive(Debug, Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    topics: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    key_prefixes: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Prints the token on stdout; errors name what is wrong.
pub fn main(args: TokenArgs) -> ExitCode {
    match mint(
        &args,
        std::env::var(&args.secret_env).ok(),
        SystemTime::now(),
    ) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn mint(args: &TokenArgs, secret: Option<String>, now: SystemTime) -> Result<String, String> {
    let secret = secret.ok_or_else(|| {
        format!(
            "{} is not set: it must hold the gateway's auth.hs256_secret",
            args.secret_env
        )
    })?;
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "{} holds {} bytes; the gateway refuses HS256 keys under {MIN_SECRET_BYTES}",
            args.secret_env,
            secret.len()
        ));
    }
    if args.topics.iter().any(|t| t.trim().is_empty()) {
        return Err("--topics: empty topic name".into());
    }
    if args.ttl.is_zero() {
        return Err("--ttl must be above zero".into());
    }
    let iat = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970".to_string())?
        .as_secs();
    let claims = Claims {
        sub: &args.subject,
        iat,
        exp: iat.saturating_add(args.ttl.as_secs().max(1)),
        topics: &args.topics,
        key_prefixes: &args.key_prefixes,
        iss: args.issuer.as_deref(),
        aud: args.audience.as_deref(),
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot sign the token: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::auth::Authenticator;
    use crate::gateway::config::{AuthConfig, AuthMode};

    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

    fn args(topics: &[&str]) -> TokenArgs {
        TokenArgs {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            key_prefixes: vec!["ward-3/".into()],
            ttl: Duration::from_secs(3600),
            subject: "ops".into(),
            issuer: Some("millrace".into()),
            audience: None,
            secret_env: "UNUSED".into(),
        }
    }

    fn gateway(issuer: Option<&str>) -> Authenticator {
        Authenticator::new(&AuthConfig {
            mode: AuthMode::Jwt,
            hs256_secret: Some(SECRET.into()),
            rs256_public_keys: None,
            issuer: issuer.map(str::to_string),
            audience: None,
            cookie: "millrace_token".into(),
            query_param: "access_token".into(),
            leeway: Duration::from_secs(0),
        })
        .unwrap()
    }

    #[test]
    fn a_minted_token_is_accepted_by_the_gateway_for_its_topics_only() {
        let token = mint(&args(&["vitals"]), Some(SECRET.into()), SystemTime::now()).unwrap();
        let grant = gateway(Some("millrace")).verify(&token).unwrap();
        assert!(grant.may_read("vitals"));
        assert!(!grant.may_read("other"));
        assert_eq!(grant.key_prefixes, Some(vec![b"ward-3/".to_vec()]));
    }

    #[test]
    fn a_missing_or_short_key_and_a_zero_ttl_are_refused() {
        let e = mint(&args(&["t"]), None, SystemTime::now()).unwrap_err();
        assert!(e.contains("UNUSED is not set"), "{e}");
        let e = mint(&args(&["t"]), Some("short".into()), SystemTime::now()).unwrap_err();
        assert!(e.contains("under 32"), "{e}");
        let mut a = args(&["t"]);
        a.ttl = Duration::ZERO;
        assert!(mint(&a, Some(SECRET.into()), SystemTime::now()).is_err());
    }

    #[test]
    fn an_expired_token_is_refused_by_the_gateway() {
        let long_ago = SystemTime::now() - Duration::from_secs(7200);
        let token = mint(&args(&["vitals"]), Some(SECRET.into()), long_ago).unwrap();
        assert!(gateway(None).verify(&token).is_err());
    }
}
