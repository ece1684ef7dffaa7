//! Aggregates shared by `window` and `reduce`: which ones a step computes
//! ([`Aggregates`]), the running state behind them ([`Acc`]) and its byte
//! encoding in the state stores.
//!
//! An [`Acc`] always tracks the count, sum, minimum and maximum (they cost
//! 32 bytes), and a DDSketch (relative accuracy 1%, from the
//! `sketches-ddsketch` crate) only when a quantile is configured. `mean` is
//! `sum / count`. Quantiles are the sketch's lower quantile: the value of
//! rank `floor(q * (count - 1))`, within 1% of the exact value for values
//! further from zero than 1e-9.
//!
//! Encoding of an [`Acc`] (all integers big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version, `1` |
//! | 1 | flags: bit 0 set when a sketch follows |
//! | 8 | count (`u64`) |
//! | 8 × 3 | sum, min, max (`f64` bits) |
//! | rest | the sketch in the DDSketch binary format shared with DataDog's Java library (`DDSketch::to_java_bytes`) |

use std::fmt;

use serde::{Deserialize, Deserializer};
use serde_json::{Map as JsonMap, Value as Json};
use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use super::keys::Reader;

/// One aggregate, as written in `aggregates:`.
#[derive(Debug, Clone, PartialEq)]
pub enum Aggregate {
    /// Number of records.
    Count,
    /// Sum of the values.
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Arithmetic mean of the values.
    Mean,
    /// A quantile such as `p50`, `p95`, `p99` (any `p<x>` with
    /// `0 < x < 100`, e.g. `p99.9`), estimated with a DDSketch.
    Quantile {
        /// The name as written, also the output field.
        name: String,
        /// The quantile in `(0, 1)`.
        q: f64,
    },
}

impl Aggregate {
    /// Parses an aggregate name.
    pub fn parse(text: &str) -> Result<Aggregate, String> {
        Ok(match text {
            "count" => Aggregate::Count,
            "sum" => Aggregate::Sum,
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            "mean" => Aggregate::Mean,
            _ => {
                let percent = text
                    .strip_prefix('p')
                    .filter(|p| {
                        !p.is_empty()
                            && p.chars().all(|c| c.is_ascii_digit() || c == '.')
                            && !p.starts_with('.')
                            && !p.ends_with('.')
                    })
                    .and_then(|p| p.parse::<f64>().ok())
                    .filter(|p| *p > 0.0 && *p < 100.0)
                    .ok_or_else(|| {
                        format!(
                            "unknown aggregate `{text}`: use count, sum, min, max, mean \
                             or a quantile such as p50, p95, p99 (p<x> with 0 < x < 100)"
                        )
                    })?;
                Aggregate::Quantile {
                    name: text.to_string(),
                    q: percent / 100.0,
                }
            }
        })
    }

    /// The name, which is also the output field.
    pub fn name(&self) -> &str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Mean => "mean",
            Aggregate::Quantile { name, .. } => name,
        }
    }

    pub fn is_quantile(&self) -> bool {
        matches!(self, Aggregate::Quantile { .. })
    }
}

impl fmt::Display for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Aggregate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Aggregate::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The aggregates one step computes, checked.
#[derive(Debug, Clone)]
pub struct Aggregates {
    list: Vec<Aggregate>,
}

impl Aggregates {
    /// Checks the list: not empty, no aggregate twice.
    pub fn new(list: &[Aggregate]) -> Result<Self, String> {
        if list.is_empty() {
            return Err("`aggregates` is empty: list at least one (e.g. [count])".to_string());
        }
        for (i, a) in list.iter().enumerate() {
            let twice = list[..i].iter().any(|b| {
                a.name() == b.name()
                    || matches!((a, b), (Aggregate::Quantile { q: x, .. }, Aggregate::Quantile { q: y, .. }) if x == y)
            });
            if twice {
                return Err(format!("aggregate `{a}` is listed twice"));
            }
        }
        Ok(Aggregates {
            list: list.to_vec(),
        })
    }

    /// Whether a value expression is needed (anything but `count`).
    pub fn needs_value(&self) -> bool {
        self.list.iter().any(|a| *a != Aggregate::Count)
    }

    /// Whether a quantile sketch is kept.
    pub fn has_quantiles(&self) -> bool {
        self.list.iter().any(Aggregate::is_quantile)
    }

    /// The quantiles configured, for error messages.
    pub fn quantiles(&self) -> Vec<&str> {
        self.list
            .iter()
            .filter(|a| a.is_quantile())
            .map(Aggregate::name)
            .collect()
    }

    /// `count/mean/p99`, for `describe`.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.list.iter().map(Aggregate::name).collect();
        names.join("/")
    }

    /// A fresh accumulator.
    pub fn empty(&self) -> Acc {
        Acc {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sketch: self
                .has_quantiles()
                .then(|| DDSketch::new(SketchConfig::defaults())),
        }
    }

    /// Writes the configured aggregates of `acc` into an output object.
    /// Numbers without a JSON form (a sum that
    /// overflowed to infinity) are written as `null`.
    pub fn render(&self, acc: &Acc, into: &mut JsonMap<String, Json>) {
        for a in &self.list {
            let value = match a {
                Aggregate::Count => Json::from(acc.count),
                Aggregate::Sum => number(acc.sum),
                Aggregate::Min => number(acc.min),
                Aggregate::Max => number(acc.max),
                Aggregate::Mean => number(acc.sum / acc.count as f64),
                Aggregate::Quantile { q, .. } => acc
                    .sketch
                    .as_ref()
                    .and_then(|s| s.quantile(*q).ok().flatten())
                    .map_or(Json::Null, number),
            };
            into.insert(a.name().to_string(), value);
        }
    }
}

fn number(x: f64) -> Json {
    serde_json::Number::from_f64(x).map_or(Json::Null, Json::Number)
}

/// The running state of the aggregates of one window or key.
#[derive(Clone)]
pub struct Acc {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    sketch: Option<DDSketch>,
}

impl fmt::Debug for Acc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acc")
            .field("count", &self.count)
            .field("sum", &self.sum)
            .field("min", &self.min)
            .field("max", &self.max)
            .field("sketch", &self.sketch.is_some())
            .finish()
    }
}

const VERSION: u8 = 1;
const HAS_SKETCH: u8 = 1;

impl Acc {
    /// Adds one record; `value` is `None` when only `count` is configured.
    pub fn add(&mut self, value: Option<f64>) {
        self.count += 1;
        if let Some(v) = value {
            self.sum += v;
            self.min = self.min.min(v);
            self.max = self.max.max(v);
            if let Some(sketch) = &mut self.sketch {
                sketch.add(v);
            }
        }
    }

    /// Adds everything `other` saw (merging session windows).
    pub fn merge(&mut self, other: &Acc) -> Result<(), String> {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        match (&mut self.sketch, &other.sketch) {
            (Some(mine), Some(theirs)) => mine
                .merge(theirs)
                .map_err(|e| format!("cannot merge quantile sketches: {e}")),
            // An accumulator written before quantiles were configured has
            // no sketch; what it saw cannot be recovered.
            _ => Ok(()),
        }
    }

    /// Appends the encoding described in the module docs.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        buf.push(VERSION);
        buf.push(if self.sketch.is_some() { HAS_SKETCH } else { 0 });
        buf.extend_from_slice(&self.count.to_be_bytes());
        for x in [self.sum, self.min, self.max] {
            buf.extend_from_slice(&x.to_bits().to_be_bytes());
        }
        if let Some(sketch) = &self.sketch {
            buf.extend_from_slice(&sketch.to_java_bytes());
        }
    }

    /// Decodes [`encode`](Acc::encode)'s output (all of `bytes`).
    pub fn decode(bytes: &[u8]) -> Result<Acc, String> {
        let mut r = Reader::new(bytes);
        let short = || "aggregate state is truncated".to_string();
        let version = r.byte().ok_or_else(short)?;
        if version != VERSION {
            return Err(format!("aggregate state has unknown version {version}"));
        }
        let flags = r.byte().ok_or_else(short)?;
        let count = r.u64().ok_or_else(short)?;
        let sum = r.f64().ok_or_else(short)?;
        let min = r.f64().ok_or_else(short)?;
        let max = r.f64().ok_or_else(short)?;
        let rest = r.rest();
        let sketch = if flags & HAS_SKETCH != 0 {
            Some(
                DDSketch::from_java_bytes(rest)
                    .map_err(|e| format!("cannot decode the quantile sketch: {e}"))?,
            )
        } else if rest.is_empty() {
            None
        } else {
            return Err("aggregate state has trailing bytes".to_string());
        };
        Ok(Acc {
            count,
            sum,
            min,
            max,
            sketch,
        })
    }

    /// Encoded, as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.encode(&mut buf);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn aggs(names: &[&str]) -> Aggregates {
        let list: Vec<Aggregate> = names.iter().map(|n| Aggregate::parse(n).unwrap()).collect();
        Aggregates::new(&list).unwrap()
    }

    #[test]
    fn names_parse_and_typos_are_refused() {
        assert_eq!(Aggregate::parse("mean"), Ok(Aggregate::Mean));
        match Aggregate::parse("p99.9") {
            Ok(Aggregate::Quantile { name, q }) => {
                assert_eq!(name, "p99.9");
                assert!((q - 0.999).abs() < 1e-12, "{q}");
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "meen", "p", "p100", "p0", "p.5", "p5.", "p1e1", "pNaN", "P50", "",
        ] {
            let e = Aggregate::parse(bad).unwrap_err();
            assert!(e.contains("unknown aggregate"), "{bad}: {e}");
        }
        assert!(Aggregates::new(&[]).is_err());
        let twice = [Aggregate::Count, Aggregate::Count];
        assert!(Aggregates::new(&twice).unwrap_err().contains("twice"));
        let same_q = [
            Aggregate::parse("p50").unwrap(),
            Aggregate::parse("p50.0").unwrap(),
        ];
        assert!(Aggregates::new(&same_q).is_err());
    }

    #[test]
    fn renders_the_configured_aggregates() {
        let a = aggs(&["max", "count", "mean", "sum", "min"]);
        let mut acc = a.empty();
        for v in [4.0, -2.0, 7.0] {
            acc.add(Some(v));
        }
        let mut out = JsonMap::new();
        a.render(&acc, &mut out);
        assert_eq!(
            Json::Object(out),
            json!({"max": 7.0, "count": 3, "mean": 3.0, "sum": 9.0, "min": -2.0})
        );
        assert!(!aggs(&["count"]).needs_value());
        assert!(a.needs_value());
    }

    #[test]
    fn encoding_round_trips_with_and_without_sketch() {
        for names in [&["count", "sum"][..], &["count", "p50", "p99"][..]] {
            let a = aggs(names);
            let mut acc = a.empty();
            for v in 1..=1000 {
                acc.add(Some(f64::from(v)));
            }
            let bytes = acc.to_bytes();
            let back = Acc::decode(&bytes).unwrap();
            let (mut x, mut y) = (JsonMap::new(), JsonMap::new());
            a.render(&acc, &mut x);
            a.render(&back, &mut y);
            assert_eq!(x, y);
            assert_eq!(back.to_bytes(), bytes);
        }
        assert!(Acc::decode(b"").is_err());
        assert!(Acc::decode(&[VERSION, 0, 1]).is_err());
        assert!(Acc::decode(&[9; 40]).is_err());
    }

    #[test]
    fn quantiles_are_within_the_sketch_accuracy() {
        let a = aggs(&["p50", "p95", "p99", "p99.9"]);
        let mut acc = a.empty();
        // A known distribution, inserted in a scrambled order: 1..=10000.
        for i in 0..10_000u32 {
            acc.add(Some(f64::from((i * 7_919) % 10_000 + 1)));
        }
        let mut out = JsonMap::new();
        a.render(&Acc::decode(&acc.to_bytes()).unwrap(), &mut out);
        for (name, exact) in [
            ("p50", 5_000.0),
            ("p95", 9_500.0),
            ("p99", 9_900.0),
            ("p99.9", 9_990.0),
        ] {
            let got = out[name].as_f64().unwrap();
            assert!(
                (got - exact).abs() <= exact * 0.01 + 1.0,
                "{name}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn merging_adds_everything() {
        let a = aggs(&["count", "sum", "min", "max", "p50"]);
        let (mut x, mut y) = (a.empty(), a.empty());
        x.add(Some(1.0));
        y.add(Some(3.0));
        y.add(Some(5.0));
        x.merge(&y).unwrap();
        let mut out = JsonMap::new();
        a.render(&x, &mut out);
        assert_eq!(out["count"], json!(3));
        assert_eq!(out["sum"], json!(9.0));
        assert_eq!(out["min"], json!(1.0));
        assert_eq!(out["max"], json!(5.0));
        let p50 = out["p50"].as_f64().unwrap();
        assert!((p50 - 3.0).abs() < 0.04, "{p50}");
    }
}
