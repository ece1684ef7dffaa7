//! Request parameters: the query string of subscription and page requests,
//! parsed by hand because keys repeat (`?key=a&key=b`) and every problem
//! must come back as a clear 400.

use super::outbox::Policy;
use super::position::Start;

/// Longest query string accepted.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;

/// Splits `a=1&b=x%20y` into decoded pairs (`+` is a space).
pub fn pairs(query: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let Some(query) = query else {
        return Ok(Vec::new());
    };
    if query.len() > MAX_QUERY_BYTES {
        return Err(format!(
            "the query string is {} bytes long; the limit is {MAX_QUERY_BYTES}",
            query.len()
        ));
    }
    let mut out = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        out.push((decode(name)?, decode(value)?));
    }
    Ok(out)
}

fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-escape in `{text}`"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("`{text}` is not UTF-8 once decoded"))
}

/// Value format asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// JSON messages (SSE data, WebSocket text frames).
    Json,
    /// WebSocket binary frames with the value bytes untouched (raw topics).
    Binary,
}

/// A subscription's or page's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub start: Option<Start>,
    pub keys: Vec<Vec<u8>>,
    pub filter: Option<String>,
    pub format: Option<WireFormat>,
    pub policy: Option<Policy>,
    /// Page size (records endpoint).
    pub limit: Option<usize>,
}

/// Which parameters an endpoint takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Subscribe,
    Page,
    Latest,
}

impl Params {
    /// Reads the parameters an endpoint takes. `token_param` (the auth query
    /// parameter) is allowed everywhere; names starting with `_` are ignored
    /// (cache busters); anything else unknown is an error, so a typo such as
    /// `strat=` does not silently fall back to a default.
    pub fn parse(
        pairs: &[(String, String)],
        endpoint: Endpoint,
        token_param: &str,
        max_keys: usize,
    ) -> Result<Params, String> {
        let mut p = Params {
            start: None,
            keys: Vec::new(),
            filter: None,
            format: None,
            policy: None,
            limit: None,
        };
        for (name, value) in pairs {
            let allowed = matches!(
                (name.as_str(), endpoint),
                ("key", _)
                    | ("start" | "filter", Endpoint::Subscribe | Endpoint::Page)
                    | ("format" | "policy", Endpoint::Subscribe)
                    | ("limit", Endpoint::Page)
            );
            if name == token_param || name.starts_with('_') {
                continue;
            }
            if !allowed {
                return Err(format!("unknown query parameter `{name}`"));
            }
            match name.as_str() {
                "start" => p.start = Some(Start::parse(value).map_err(|e| format!("start: {e}"))?),
                "key" => {
                    if p.keys.len() >= max_keys {
                        return Err(format!("at most {max_keys} keys per request"));
                    }
                    p.keys.push(value.as_bytes().to_vec());
                }
                "filter" if !value.trim().is_empty() => p.filter = Some(value.clone()),
                "format" => {
                    p.format = Some(match value.as_str() {
                        "json" => WireFormat::Json,
                        "binary" => WireFormat::Binary,
                        other => {
                            return Err(format!("format `{other}` is not `json` or `binary`"));
                        }
                    })
                }
                "policy" => p.policy = Some(Policy::parse(value)?),
                "limit" => {
                    let n: usize = value
                        .parse()
                        .map_err(|_| format!("limit `{value}` is not a number"))?;
                    if n == 0 {
                        return Err("limit must be at least 1".into());
                    }
                    p.limit = Some(n);
                }
                _ => {}
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_decoded_and_keys_repeat() {
        let q = pairs(Some(
            "key=ward%2F1&key=b+c&filter=value.hr%20%3E%20100&_=17",
        ))
        .unwrap();
        let p = Params::parse(&q, Endpoint::Subscribe, "access_token", 10).unwrap();
        assert_eq!(p.keys, vec![b"ward/1".to_vec(), b"b c".to_vec()]);
        assert_eq!(p.filter.as_deref(), Some("value.hr > 100"));
        assert!(pairs(Some("a=%zz")).is_err());
        assert!(pairs(Some("a=%ff")).is_err(), "not UTF-8");
    }

    #[test]
    fn every_option_parses_and_typos_are_refused() {
        let q = pairs(Some(
            "start=0:5,1:7&format=binary&policy=conflate&access_token=xyz",
        ))
        .unwrap();
        let p = Params::parse(&q, Endpoint::Subscribe, "access_token", 10).unwrap();
        assert_eq!(p.start, Some(Start::Offsets(vec![(0, 5), (1, 7)])));
        assert_eq!(p.format, Some(WireFormat::Binary));
        assert_eq!(p.policy, Some(Policy::Conflate));
        for bad in ["strat=earliest", "format=xml", "policy=drop", "start=soon"] {
            let q = pairs(Some(bad)).unwrap();
            assert!(
                Params::parse(&q, Endpoint::Subscribe, "access_token", 10).is_err(),
                "{bad}"
            );
        }
        let q = pairs(Some("limit=5")).unwrap();
        assert!(Params::parse(&q, Endpoint::Subscribe, "t", 10).is_err());
        assert_eq!(
            Params::parse(&q, Endpoint::Page, "t", 10).unwrap().limit,
            Some(5)
        );
        let q = pairs(Some("key=a&key=b&key=c")).unwrap();
        assert!(Params::parse(&q, Endpoint::Latest, "t", 2).is_err());
    }
}
