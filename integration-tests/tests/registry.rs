//! `millrace registry` against a real broker: the compatibility matrix,
//! restarts, two instances, deletes, error codes, the `_schemas` record
//! format (both ways), `millrace schemas register/check`, and Confluent's
//! Python client.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use millrace_integration_tests::registry::{Registry, SR_JSON};
use millrace_integration_tests::{
    create_topics, millrace_cli, produce, producer, read_committed, repo_root, unique,
};
use rdkafka::message::Message;
use serde_json::{Value, json};

/// A record schema with the given fields.
fn rec(fields: &[&str]) -> String {
    format!(
        r#"{{"type":"record","name":"Reading","namespace":"millrace.test","fields":[{}]}}"#,
        fields.join(",")
    )
}

const A: &str = r#"{"name":"a","type":"int"}"#;
const B: &str = r#"{"name":"b","type":"int"}"#;
const B_DEFAULT: &str = r#"{"name":"b","type":"int","default":0}"#;
const C: &str = r#"{"name":"c","type":"string"}"#;
const C_DEFAULT: &str = r#"{"name":"c","type":"string","default":""}"#;

fn schema_body(schema: &str) -> Value {
    json!({ "schema": schema })
}

fn error_code(body: &Value) -> i64 {
    body["error_code"].as_i64().unwrap_or(-1)
}

/// Asserts an error answer: HTTP status and Confluent code.
#[track_caller]
fn assert_error(answer: (u16, Value), status: u16, code: i64) {
    let (got, body) = answer;
    assert_eq!((got, error_code(&body)), (status, code), "{body}");
    assert!(body["message"].is_string(), "{body}");
}

struct Case {
    level: &'static str,
    history: Vec<String>,
    compatible: String,
    incompatible: String,
}

#[test]
fn each_level_accepts_a_compatible_evolution_and_refuses_an_incompatible_one() -> anyhow::Result<()>
{
    let registry = Registry::start(&unique("schemas-matrix"))?;
    let cases = [
        Case {
            level: "BACKWARD",
            history: vec![rec(&[A])],
            compatible: rec(&[A, B_DEFAULT]),
            // The new reader needs `c`, which old data lacks.
            incompatible: rec(&[A, C]),
        },
        Case {
            level: "BACKWARD_TRANSITIVE",
            history: vec![rec(&[A]), rec(&[A, B_DEFAULT])],
            compatible: rec(&[A, B_DEFAULT, C_DEFAULT]),
            // Reads the latest version's data, not version 1's (no `b`).
            incompatible: rec(&[A, B]),
        },
        Case {
            level: "FORWARD",
            history: vec![rec(&[A, B])],
            compatible: rec(&[A, B, C]),
            // Old readers need `b` and `c`.
            incompatible: rec(&[A]),
        },
        Case {
            level: "FORWARD_TRANSITIVE",
            history: vec![rec(&[A, B]), rec(&[A, B_DEFAULT])],
            compatible: rec(&[A, B_DEFAULT, C]),
            // The latest reader defaults `b`; version 1's reader cannot.
            incompatible: rec(&[A, C]),
        },
        Case {
            level: "FULL",
            history: vec![rec(&[A, B_DEFAULT])],
            compatible: rec(&[A, B_DEFAULT, C_DEFAULT]),
            // Backward but not forward: readers of the latest need `a`.
            incompatible: rec(&[B_DEFAULT, C_DEFAULT]),
        },
        Case {
            level: "FULL_TRANSITIVE",
            history: vec![rec(&[A]), rec(&[A, B_DEFAULT])],
            compatible: rec(&[A, B_DEFAULT, C_DEFAULT]),
            // Full with the latest, not backward with version 1.
            incompatible: rec(&[A, B]),
        },
        Case {
            level: "NONE",
            history: vec![rec(&[A])],
            compatible: rec(&[A, B_DEFAULT]),
            // Anything goes.
            incompatible: r#""string""#.to_string(),
        },
    ];
    for case in &cases {
        let subject = unique(&format!("matrix-{}", case.level.to_lowercase()));
        let (status, body) = registry.put(
            &format!("/config/{subject}"),
            &json!({"compatibility": case.level}),
        )?;
        assert_eq!((status, &body["compatibility"]), (200, &json!(case.level)));
        let (_, body) = registry.get(&format!("/config/{subject}"))?;
        assert_eq!(body["compatibilityLevel"], case.level);
        for schema in &case.history {
            registry.register(&subject, schema)?;
        }
        let before = case.history.len() as u64;

        let id = registry.register(&subject, &case.compatible)?;
        let (_, latest) = registry.get(&format!("/subjects/{subject}/versions/latest"))?;
        assert_eq!(
            (latest["version"].as_u64(), latest["id"].as_u64()),
            (Some(before + 1), Some(id)),
            "{}: {latest}",
            case.level
        );

        let check_latest = registry.post(
            &format!("/compatibility/subjects/{subject}/versions/latest?verbose=true"),
            &schema_body(&case.incompatible),
        )?;
        let check_all = registry.post(
            &format!("/compatibility/subjects/{subject}/versions?verbose=true"),
            &schema_body(&case.incompatible),
        )?;
        let (status, body) = registry.post(
            &format!("/subjects/{subject}/versions"),
            &schema_body(&case.incompatible),
        )?;
        if case.level == "NONE" {
            assert_eq!(status, 200, "{}: {body}", case.level);
            assert_eq!(check_all.1["is_compatible"], true);
            continue;
        }
        assert_eq!(
            (status, error_code(&body)),
            (409, 409),
            "{}: {body}",
            case.level
        );
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("incompatible") && m.contains(case.level)),
            "{}: {body}",
            case.level
        );
        // Nothing was registered.
        let (_, versions) = registry.get(&format!("/subjects/{subject}/versions"))?;
        assert_eq!(versions.as_array().map(Vec::len), Some(before as usize + 1));
        // The dry runs agree: against all versions per the level it is
        // incompatible; against the latest alone only the transitive
        // levels' examples pass.
        assert_eq!(check_all.0, 200);
        assert_eq!(check_all.1["is_compatible"], false, "{}", case.level);
        assert!(
            check_all.1["messages"]
                .as_array()
                .is_some_and(|m| !m.is_empty())
        );
        let transitive = case.level.ends_with("_TRANSITIVE");
        assert_eq!(
            check_latest.1["is_compatible"],
            json!(transitive),
            "{}: {}",
            case.level,
            check_latest.1
        );
    }

    // Without any configuration the level is BACKWARD.
    let (_, global) = registry.get("/config")?;
    assert_eq!(global["compatibilityLevel"], "BACKWARD");
    let subject = unique("matrix-default");
    registry.register(&subject, &rec(&[A]))?;
    let (status, body) = registry.post(
        &format!("/subjects/{subject}/versions"),
        &schema_body(&rec(&[A, C])),
    )?;
    assert_eq!((status, error_code(&body)), (409, 409), "{body}");
    // Type promotions and enum/union evolutions follow Avro resolution.
    let subject = unique("matrix-promotions");
    let typed = |t: &str| rec(&[&format!(r#"{{"name":"v","type":{t}}}"#)]);
    registry.register(&subject, &typed(r#""int""#))?;
    registry.register(&subject, &typed(r#""long""#))?;
    registry.register(&subject, &typed(r#""double""#))?;
    let (status, _) = registry.post(
        &format!("/subjects/{subject}/versions"),
        &schema_body(&typed(r#""float""#)),
    )?;
    assert_eq!(status, 409, "double to float narrows");
    registry.register(&subject, &typed(r#"["null","double"]"#))?;
    Ok(())
}

/// Polls until `f` holds, for answers another instance reaches a moment
/// later.
fn eventually(what: &str, mut f: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("{what}: not within 20 s")
}

#[test]
fn ids_versions_and_configs_survive_a_restart() -> anyhow::Result<()> {
    let mut registry = Registry::start(&unique("schemas-restart"))?;
    let s1 = unique("restart-a");
    let s2 = unique("restart-b");
    let v1 = registry.register(&s1, &rec(&[A]))?;
    let v2 = registry.register(&s1, &rec(&[A, B_DEFAULT]))?;
    let shared = registry.register(&s2, &rec(&[A]))?;
    assert_eq!(
        shared, v1,
        "the same schema has the same id in every subject"
    );
    registry.put(&format!("/config/{s2}"), &json!({"compatibility": "NONE"}))?;
    registry.put("/config", &json!({"compatibility": "FULL"}))?;
    registry.delete(&format!("/subjects/{s1}/versions/1"))?;
    let snapshot = |r: &Registry| -> anyhow::Result<Vec<Value>> {
        Ok(vec![
            r.get("/subjects")?.1,
            r.get(&format!("/subjects/{s1}/versions"))?.1,
            r.get(&format!("/subjects/{s1}/versions?deleted=true"))?.1,
            r.get(&format!("/subjects/{s1}/versions/2"))?.1,
            r.get(&format!("/subjects/{s2}/versions/1"))?.1,
            r.get(&format!("/schemas/ids/{v1}"))?.1,
            r.get(&format!("/schemas/ids/{v2}"))?.1,
            r.get(&format!("/config/{s2}"))?.1,
            r.get("/config")?.1,
        ])
    };
    let before = snapshot(&registry)?;

    registry.stop()?;
    registry.restart()?;
    assert_eq!(snapshot(&registry)?, before, "after a clean restart");
    // SIGKILL loses nothing committed either.
    registry.kill()?;
    registry.restart()?;
    assert_eq!(snapshot(&registry)?, before, "after SIGKILL and restart");

    // The same schema again: the same id, no new version.
    assert_eq!(registry.register(&s1, &rec(&[A, B_DEFAULT]))?, v2);
    let (_, versions) = registry.get(&format!("/subjects/{s1}/versions"))?;
    assert_eq!(versions, json!([2]));
    // A new one: a new id, above every earlier one.
    let v3 = registry.register(&s1, &rec(&[A, B_DEFAULT, C_DEFAULT]))?;
    assert!(v3 > v2, "{v3} > {v2}");
    let (_, latest) = registry.get(&format!("/subjects/{s1}/versions/latest"))?;
    assert_eq!(latest["version"], 3);
    registry.stop()
}

#[test]
fn two_instances_agree_on_ids_and_never_reuse_one() -> anyhow::Result<()> {
    let topic = unique("schemas-two");
    let mut first = Registry::start(&topic)?;
    let mut second = Registry::start(&topic)?;

    let s = unique("two-a");
    let id = first.register(&s, &rec(&[A]))?;
    // The same schema through the other instance: same id, same version.
    assert_eq!(second.register(&s, &rec(&[A]))?, id);
    let (_, versions) = second.get(&format!("/subjects/{s}/versions"))?;
    assert_eq!(versions, json!([1]));
    let other_subject = unique("two-b");
    assert_eq!(second.register(&other_subject, &rec(&[A]))?, id);
    let id2 = second.register(&s, &rec(&[A, B_DEFAULT]))?;
    assert!(id2 > id);
    assert_eq!(
        first.register(&unique("two-c"), &rec(&[A, B_DEFAULT]))?,
        id2
    );

    // Writers on both instances at once: distinct schemas get distinct
    // ids, the same schema the same id, and both instances serve the same
    // mapping.
    let schemas: Vec<String> = (0..12)
        .map(|i| rec(&[&format!(r#"{{"name":"f{i}","type":"long"}}"#)]))
        .collect();
    let shared = rec(&[r#"{"name":"shared","type":"string"}"#]);
    let results: Vec<(String, u64)> = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for (t, instance) in [&first, &second, &first, &second].into_iter().enumerate() {
            let schemas = &schemas;
            let shared = &shared;
            handles.push(scope.spawn(move || -> anyhow::Result<Vec<(String, u64)>> {
                let mut out = Vec::new();
                let subject = unique(&format!("two-writer-{t}"));
                out.push((
                    shared.clone(),
                    instance.register(&unique("two-shared"), shared)?,
                ));
                for schema in schemas.iter().skip(t).step_by(4) {
                    out.push((
                        schema.clone(),
                        instance.register(&format!("{subject}-{}", out.len()), schema)?,
                    ));
                }
                Ok(out)
            }));
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("writer thread"))
            .collect::<anyhow::Result<Vec<_>>>()
            .map(|v| v.into_iter().flatten().collect())
    })?;
    let mut by_schema: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for (schema, id) in &results {
        by_schema.entry(schema).or_default().insert(*id);
    }
    assert_eq!(by_schema.len(), 13);
    for (schema, ids) in &by_schema {
        assert_eq!(ids.len(), 1, "one id for {schema}: {ids:?}");
    }
    let all_ids: BTreeSet<u64> = by_schema.values().flatten().copied().collect();
    assert_eq!(
        all_ids.len(),
        13,
        "distinct schemas, distinct ids: {all_ids:?}"
    );
    assert!(all_ids.iter().all(|i| *i > id2));
    for (schema, ids) in &by_schema {
        let id = ids.iter().next().copied().unwrap_or_default();
        for instance in [&first, &second] {
            eventually("both instances serve every id", || {
                let (status, body) = instance.get(&format!("/schemas/ids/{id}"))?;
                Ok(status == 200 && body["schema"] == json!(schema))
            })?;
        }
    }

    // Permanently deleting the schema with the highest id does not free
    // the id, through either instance, nor after both restart.
    let top = *all_ids.iter().max().unwrap_or(&0);
    let (_, users) = first.get(&format!("/schemas/ids/{top}/versions"))?;
    for user in users.as_array().cloned().unwrap_or_default() {
        let subject = user["subject"].as_str().unwrap_or_default();
        let version = &user["version"];
        first.delete(&format!("/subjects/{subject}/versions/{version}"))?;
        let (status, _) = first.delete(&format!(
            "/subjects/{subject}/versions/{version}?permanent=true"
        ))?;
        assert_eq!(status, 200);
    }
    assert_eq!(first.get(&format!("/schemas/ids/{top}"))?.0, 404);
    let next = second.register(
        &unique("two-after"),
        &rec(&[r#"{"name":"z","type":"int"}"#]),
    )?;
    assert!(next > top, "{next} > {top}");
    first.stop()?;
    second.stop()?;
    first.restart()?;
    second.restart()?;
    let after = first.register(
        &unique("two-restarted"),
        &rec(&[r#"{"name":"y","type":"int"}"#]),
    )?;
    assert!(after > next, "{after} > {next}");
    Ok(())
}

#[test]
fn soft_and_permanent_deletes_behave_like_confluent() -> anyhow::Result<()> {
    let registry = Registry::start(&unique("schemas-delete"))?;
    let s = unique("delete");
    let x = registry.register(&s, &rec(&[A]))?;
    let y = registry.register(&s, &rec(&[A, B_DEFAULT]))?;

    let (status, body) = registry.delete(&format!("/subjects/{s}/versions/1"))?;
    assert_eq!((status, body), (200, json!(1)));
    for (query, expected) in [
        ("", json!([2])),
        ("?deleted=true", json!([1, 2])),
        ("?deleted=True", json!([1, 2])),
        ("?deleted=false", json!([2])),
        ("?deleted=False", json!([2])),
        ("?deleted_only=true", json!([1])),
    ] {
        let (_, versions) = registry.get(&format!("/subjects/{s}/versions{query}"))?;
        assert_eq!(versions, expected, "{query}");
    }
    assert_error(
        registry.get(&format!("/subjects/{s}/versions/1"))?,
        404,
        40402,
    );
    let (status, deleted) = registry.get(&format!("/subjects/{s}/versions/1?deleted=True"))?;
    assert_eq!((status, deleted["id"].as_u64()), (200, Some(x)));
    // The id of a soft-deleted version still resolves (readers of old
    // data need it).
    assert_eq!(registry.get(&format!("/schemas/ids/{x}"))?.0, 200);
    assert_error(
        registry.delete(&format!("/subjects/{s}/versions/1"))?,
        404,
        40406,
    );
    assert_error(
        registry.delete(&format!("/subjects/{s}/versions/2?permanent=true"))?,
        404,
        40407,
    );
    let (status, body) = registry.delete(&format!("/subjects/{s}/versions/1?permanent=True"))?;
    assert_eq!((status, body), (200, json!(1)));
    let (_, versions) = registry.get(&format!("/subjects/{s}/versions?deleted=true"))?;
    assert_eq!(versions, json!([2]));
    assert_error(registry.get(&format!("/schemas/ids/{x}"))?, 404, 40403);

    // Soft-deleting the subject hides it; its versions stay reachable with
    // deleted=true.
    let (status, body) = registry.delete(&format!("/subjects/{s}"))?;
    assert_eq!((status, body), (200, json!([2])));
    assert_error(registry.delete(&format!("/subjects/{s}"))?, 404, 40404);
    let (_, live) = registry.get("/subjects")?;
    assert!(!live.as_array().is_some_and(|a| a.contains(&json!(s))));
    let (_, all) = registry.get("/subjects?deleted=true")?;
    assert!(all.as_array().is_some_and(|a| a.contains(&json!(s))));
    assert_error(
        registry.get(&format!("/subjects/{s}/versions"))?,
        404,
        40401,
    );
    assert_error(
        registry.post(
            &format!("/subjects/{s}"),
            &schema_body(&rec(&[A, B_DEFAULT])),
        )?,
        404,
        40401,
    );
    let (status, found) = registry.post(
        &format!("/subjects/{s}?deleted=true"),
        &schema_body(&rec(&[A, B_DEFAULT])),
    )?;
    assert_eq!((status, found["version"].as_u64()), (200, Some(2)));

    // Registering again continues the version numbers and keeps the id.
    assert_eq!(registry.register(&s, &rec(&[A, B_DEFAULT]))?, y);
    let (_, latest) = registry.get(&format!("/subjects/{s}/versions/latest"))?;
    assert_eq!(latest["version"], 3);
    assert_error(
        registry.delete(&format!("/subjects/{s}?permanent=true"))?,
        404,
        40405,
    );
    registry.put(&format!("/config/{s}"), &json!({"compatibility": "FULL"}))?;
    registry.delete(&format!("/subjects/{s}"))?;
    let (status, body) = registry.delete(&format!("/subjects/{s}?permanent=true"))?;
    assert_eq!((status, body), (200, json!([2, 3])));
    let (_, all) = registry.get("/subjects?deleted=true")?;
    assert!(!all.as_array().is_some_and(|a| a.contains(&json!(s))));
    assert_error(
        registry.get(&format!("/subjects/{s}/versions?deleted=true"))?,
        404,
        40401,
    );
    // Its configuration went with it.
    assert_error(registry.get(&format!("/config/{s}"))?, 404, 40408);
    // A fresh start: version 1, and a new id (the old ones are never
    // reused).
    let again = registry.register(&s, &rec(&[A, B_DEFAULT]))?;
    assert!(again > y, "{again} > {y}");
    let (_, v) = registry.get(&format!("/subjects/{s}/versions/latest"))?;
    assert_eq!(v["version"], 1);
    Ok(())
}

#[test]
fn schemas_reference_named_types_of_other_subjects() -> anyhow::Result<()> {
    let registry = Registry::start(&unique("schemas-references"))?;
    let address_subject = unique("address");
    let person_subject = unique("person");
    let address = r#"{"type":"record","name":"Address","namespace":"acme","fields":[{"name":"city","type":"string"}]}"#;
    let person = r#"{"type":"record","name":"Person","namespace":"acme","fields":[{"name":"home","type":"acme.Address"}]}"#;
    registry.register(&address_subject, address)?;
    // Without the reference the type is unknown.
    assert_error(
        registry.post(
            &format!("/subjects/{person_subject}/versions"),
            &schema_body(person),
        )?,
        422,
        42201,
    );
    let references = json!([{"name": "acme.Address", "subject": address_subject, "version": 1}]);
    let (status, body) = registry.post(
        &format!("/subjects/{person_subject}/versions"),
        &json!({"schema": person, "references": references}),
    )?;
    assert_eq!(status, 200, "{body}");
    let person_id = body["id"].clone();
    let (_, version) = registry.get(&format!("/subjects/{person_subject}/versions/1"))?;
    assert_eq!(version["references"], references);
    let (_, by_id) = registry.get(&format!("/schemas/ids/{person_id}"))?;
    assert_eq!(by_id["references"], references);
    let (_, referrers) = registry.get(&format!(
        "/subjects/{address_subject}/versions/1/referencedby"
    ))?;
    assert_eq!(referrers, json!([person_id]));
    // A referenced version cannot be deleted.
    assert_error(
        registry.delete(&format!("/subjects/{address_subject}/versions/1"))?,
        422,
        42206,
    );
    // Evolution is checked through the reference too.
    let person_v2 = r#"{"type":"record","name":"Person","namespace":"acme","fields":[{"name":"home","type":"acme.Address"},{"name":"age","type":"int","default":0}]}"#;
    let (status, body) = registry.post(
        &format!("/subjects/{person_subject}/versions"),
        &json!({"schema": person_v2, "references": references}),
    )?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

#[test]
fn errors_carry_confluent_codes_and_content_types_are_negotiated() -> anyhow::Result<()> {
    let registry = Registry::start(&unique("schemas-errors"))?;
    let s = unique("errors");
    let id = registry.register(&s, &rec(&[A]))?;

    assert_error(
        registry.get("/subjects/no-such-subject/versions")?,
        404,
        40401,
    );
    assert_error(
        registry.get("/subjects/no-such-subject/versions/latest")?,
        404,
        40401,
    );
    assert_error(
        registry.get(&format!("/subjects/{s}/versions/99"))?,
        404,
        40402,
    );
    assert_error(registry.get("/schemas/ids/987654")?, 404, 40403);
    assert_error(
        registry.post(
            &format!("/subjects/{s}"),
            &schema_body(&rec(&[A, B_DEFAULT])),
        )?,
        404,
        40403,
    );
    for bad in [
        "{",
        r#"{"type":"recrd","name":"R","fields":[]}"#,
        r#"{"type":"record","name":"R","fields":[{"name":"x","type":"no.such.Type"}]}"#,
    ] {
        assert_error(
            registry.post(&format!("/subjects/{s}/versions"), &schema_body(bad))?,
            422,
            42201,
        );
    }
    assert_error(
        registry.post(
            &format!("/subjects/{s}/versions"),
            &json!({"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"}),
        )?,
        422,
        42201,
    );
    for bad in ["0", "-2", "abc", "99999999999"] {
        assert_error(
            registry.get(&format!("/subjects/{s}/versions/{bad}"))?,
            422,
            42202,
        );
    }
    assert_error(
        registry.delete(&format!("/subjects/{s}/versions/abc"))?,
        422,
        42202,
    );
    assert_error(
        registry.put("/config", &json!({"compatibility": "SIDEWAYS"}))?,
        422,
        42203,
    );
    assert_error(registry.get(&format!("/config/{s}"))?, 404, 40408);
    let (status, level) = registry.get(&format!("/config/{s}?defaultToGlobal=true"))?;
    assert_eq!(
        (status, &level["compatibilityLevel"]),
        (200, &json!("BACKWARD"))
    );
    assert_error(
        registry.get(&format!("/subjects/{s}/versions?deleted=maybe"))?,
        400,
        400,
    );
    assert_error(registry.get("/no/such/route")?, 404, 404);

    // Flags as Python sends them; the id lookup takes a subject.
    let (status, body) = registry.post(
        &format!("/subjects/{s}/versions?normalize=False"),
        &schema_body(&rec(&[A])),
    )?;
    assert_eq!((status, body["id"].as_u64()), (200, Some(id)));
    let (status, found) = registry.post(
        &format!("/subjects/{s}?normalize=False&deleted=False"),
        &schema_body(&rec(&[A])),
    )?;
    assert_eq!(
        (status, found["id"].as_u64(), found["version"].as_u64()),
        (200, Some(id), Some(1))
    );
    for query in [
        format!("?subject={s}"),
        "?subject=another".to_string(),
        String::new(),
    ] {
        let (status, body) = registry.get(&format!("/schemas/ids/{id}{query}"))?;
        assert_eq!(status, 200, "{query}");
        assert_eq!(body["schema"], json!(rec(&[A])), "{query}");
    }
    let (_, subjects) = registry.get(&format!("/schemas/ids/{id}/subjects"))?;
    assert_eq!(subjects, json!([s]));
    let (_, users) = registry.get(&format!("/schemas/ids/{id}/versions"))?;
    assert_eq!(users, json!([{"subject": s, "version": 1}]));
    let (_, raw) = registry.get(&format!("/subjects/{s}/versions/1/schema"))?;
    assert_eq!(raw, serde_json::from_str::<Value>(&rec(&[A]))?);
    let (_, types) = registry.get("/schemas/types")?;
    assert_eq!(types, json!(["AVRO"]));

    // Content types: Confluent's by default, plain JSON when that is all
    // the client accepts; request bodies in either, refused in others.
    let client = reqwest::blocking::Client::new();
    let url = format!("{}/subjects/{s}/versions/latest", registry.url());
    let content_type = |accept: &str| -> anyhow::Result<String> {
        let response = client.get(&url).header("Accept", accept).send()?;
        Ok(response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string())
    };
    assert_eq!(content_type(SR_JSON)?, SR_JSON);
    assert_eq!(content_type("application/json")?, "application/json");
    let register = |content_type: &str| -> anyhow::Result<u16> {
        Ok(client
            .post(format!("{}/subjects/{s}/versions", registry.url()))
            .header("Content-Type", content_type)
            .body(schema_body(&rec(&[A])).to_string())
            .send()?
            .status()
            .as_u16())
    };
    assert_eq!(register("application/json")?, 200);
    assert_eq!(register("application/vnd.schemaregistry+json")?, 200);
    assert_eq!(register(SR_JSON)?, 200);
    assert_eq!(register("text/plain")?, 415);

    // The operations endpoints.
    let (status, metrics) = registry.get("/metrics")?;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains("millrace_registry_requests_total{method=\"POST\",route=\"/subjects/{subject}/versions\",status=\"200\"}"),
        "{metrics}"
    );
    // Starts at 0 (pre-initialised); the writes above counted.
    let committed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("millrace_registry_writes_total{outcome=\"committed\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(committed >= 1.0, "{metrics}");
    assert_eq!(registry.get("/healthz")?.0, 200);
    Ok(())
}

#[test]
fn the_topic_holds_confluent_records_and_a_confluent_topic_is_served() -> anyhow::Result<()> {
    // What Millrace writes.
    let topic = unique("schemas-format");
    let registry = Registry::start(&topic)?;
    let s = unique("format");
    let id = registry.register(&s, &rec(&[A]))?;
    registry.put(&format!("/config/{s}"), &json!({"compatibility": "FULL"}))?;
    registry.delete(&format!("/subjects/{s}"))?;
    let records: Vec<(String, Option<Value>)> = read_committed(&topic)?
        .iter()
        .map(|m| {
            (
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().and_then(|p| serde_json::from_slice(p).ok()),
            )
        })
        .collect();
    // The last record of a key is the one compaction keeps.
    let value_of = |key: &str| -> Option<Value> {
        records
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.clone())
    };
    let schema = value_of(&format!(
        r#"{{"keytype":"SCHEMA","subject":"{s}","version":1,"magic":1}}"#
    ))
    .expect("a SCHEMA record with Confluent's key");
    assert_eq!(
        schema,
        json!({"subject": s, "version": 1, "id": id, "schema": rec(&[A]), "deleted": false})
    );
    let config = value_of(&format!(
        r#"{{"keytype":"CONFIG","subject":"{s}","magic":0}}"#
    ))
    .expect("a CONFIG record");
    assert_eq!(config["compatibilityLevel"], "FULL");
    let delete = value_of(&format!(
        r#"{{"keytype":"DELETE_SUBJECT","subject":"{s}","magic":0}}"#
    ))
    .expect("a DELETE_SUBJECT record");
    assert_eq!(delete, json!({"subject": s, "version": 1}));
    let noop = value_of(r#"{"keytype":"NOOP","magic":0}"#).expect("a NOOP mark");
    assert_eq!(noop["maxId"].as_u64(), Some(id));
    drop(registry);

    // A topic written by Confluent Schema Registry and Karapace.
    let topic = unique("schemas-confluent");
    create_topics(&[(topic.as_str(), 1)]).await_blocking()?;
    let int = r#"{"type":"int"}"#;
    let reading = rec(&[A]);
    let value = |subject: &str, version: u32, id: u32, schema: &str| {
        json!({"subject": subject, "version": version, "id": id, "schemaType": "AVRO",
               "md5": "ignored", "schema": schema, "deleted": false})
        .to_string()
        .into_bytes()
    };
    let seed: Vec<(Option<String>, Vec<u8>)> = vec![
        (
            Some(r#"{"keytype":"SCHEMA","subject":"orders-value","version":1,"magic":1}"#.into()),
            value("orders-value", 1, 5, int),
        ),
        (
            Some(r#"{"keytype":"SCHEMA","subject":"orders-value","version":2,"magic":1}"#.into()),
            value("orders-value", 2, 9, &reading),
        ),
        // Karapace's global config key carries a null subject.
        (
            Some(r#"{"keytype":"CONFIG","subject":null,"magic":0}"#.into()),
            br#"{"compatibilityLevel":"FULL"}"#.to_vec(),
        ),
        (
            Some(r#"{"keytype":"CONFIG","subject":"orders-value","magic":0}"#.into()),
            br#"{"compatibilityLevel":"NONE"}"#.to_vec(),
        ),
        (
            Some(r#"{"keytype":"SCHEMA","subject":"old-value","version":1,"magic":1}"#.into()),
            value("old-value", 1, 5, int),
        ),
        (
            Some(r#"{"keytype":"DELETE_SUBJECT","subject":"old-value","magic":0}"#.into()),
            br#"{"subject":"old-value","version":1}"#.to_vec(),
        ),
        (
            Some(r#"{"keytype":"MODE","subject":"orders-value","magic":0}"#.into()),
            br#"{"mode":"READWRITE"}"#.to_vec(),
        ),
        // Garbage is skipped, as Confluent and Karapace skip it.
        (Some("not json".into()), b"{}".to_vec()),
    ];
    produce(&producer(), &topic, &seed).await_blocking()?;
    let registry = Registry::start(&topic)?;
    let (_, subjects) = registry.get("/subjects")?;
    assert_eq!(subjects, json!(["orders-value"]));
    let (_, subjects) = registry.get("/subjects?deleted=true")?;
    assert_eq!(subjects, json!(["old-value", "orders-value"]));
    let (_, v2) = registry.get("/subjects/orders-value/versions/latest")?;
    assert_eq!(
        (v2["version"].as_u64(), v2["id"].as_u64()),
        (Some(2), Some(9))
    );
    let (_, by_id) = registry.get("/schemas/ids/5")?;
    assert_eq!(by_id["schema"], int);
    let (_, users) = registry.get("/schemas/ids/5/versions?deleted=true")?;
    assert_eq!(
        users,
        json!([{"subject": "old-value", "version": 1}, {"subject": "orders-value", "version": 1}])
    );
    assert_eq!(registry.get("/config")?.1["compatibilityLevel"], "FULL");
    assert_eq!(
        registry.get("/config/orders-value")?.1["compatibilityLevel"],
        "NONE"
    );
    // New ids continue after the highest in the topic.
    let next = registry.register("payments-value", &rec(&[B]))?;
    assert_eq!(next, 10);
    // The old schema under a new subject keeps its id.
    assert_eq!(registry.register("payments-key", int)?, 5);
    Ok(())
}

/// Runs a future on a small runtime (the harness's topic helpers are
/// async; these tests are not).
trait Blocking: std::future::Future + Sized {
    fn await_blocking(self) -> Self::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(self)
    }
}

impl<F: std::future::Future> Blocking for F {}

#[test]
fn schemas_register_and_check_work_through_the_cli() -> anyhow::Result<()> {
    let registry = Registry::start(&unique("schemas-cli"))?;
    let dir = tempfile::tempdir()?;
    let stem = unique("readings");
    let value_file = dir.path().join(format!("{stem}.avsc"));
    let key_file = dir.path().join(format!("{stem}-key.avsc"));
    std::fs::write(&value_file, rec(&[A]))?;
    std::fs::write(&key_file, r#""string""#)?;
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let url = registry.url();
    let cli = |args: &[&str]| millrace_cli(args, false);

    let (code, stdout, stderr) = cli(&["schemas", "check", &dir_arg, "--url", &url])?;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("new subject   {stem}-value  would be version 1")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("{stem}-key")), "{stdout}");
    assert_eq!(
        registry.get("/subjects")?.1,
        json!([]),
        "check registers nothing"
    );

    let (code, stdout, stderr) = cli(&["schemas", "register", &dir_arg, "--url", &url])?;
    assert_eq!(code, 0, "{stderr}");
    let (_, latest) = registry.get(&format!("/subjects/{stem}-value/versions/latest"))?;
    let expected = format!("registered    {stem}-value  version 1  id {}", latest["id"]);
    assert!(stdout.contains(&expected), "{stdout}\nexpected: {expected}");
    let (code, stdout, _) = cli(&["schemas", "register", &dir_arg, "--url", &url])?;
    assert_eq!(code, 0);
    assert!(
        stdout.contains(&format!(
            "unchanged     {stem}-value  version 1  id {}",
            latest["id"]
        )),
        "{stdout}"
    );

    // A compatible change, then an incompatible one.
    std::fs::write(&value_file, rec(&[A, B_DEFAULT]))?;
    let (code, stdout, stderr) = cli(&["schemas", "check", &dir_arg, "--url", &url])?;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!(
            "compatible    {stem}-value  would be version 2 (BACKWARD)"
        )),
        "{stdout}"
    );
    std::fs::write(&value_file, rec(&[A, C]))?;
    let (code, _, stderr) = cli(&["schemas", "check", &dir_arg, "--url", &url])?;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("incompatible") && stderr.contains("`c`"),
        "{stderr}"
    );
    // The URL from the environment.
    let output = Command::new(millrace_integration_tests::millrace_bin())
        .args(["schemas", "register", &dir_arg])
        .env("MILLRACE_REGISTRY_URL", &url)
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("409"), "{stderr}");
    let (_, versions) = registry.get(&format!("/subjects/{stem}-value/versions"))?;
    assert_eq!(
        versions,
        json!([1]),
        "the incompatible schema was not registered"
    );

    // A file that is not Avro fails by name; the others still go through.
    std::fs::write(&value_file, rec(&[A, B_DEFAULT]))?;
    std::fs::write(dir.path().join("broken.avsc"), "{not avro")?;
    let (code, stdout, stderr) = cli(&["schemas", "register", &dir_arg, "--url", &url])?;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("broken.avsc") && stderr.contains("not a valid Avro schema"),
        "{stderr}"
    );
    assert!(
        stdout.contains(&format!("registered    {stem}-value  version 2")),
        "{stdout}"
    );
    // No directory, no registry: clear errors.
    let (code, _, stderr) = cli(&["schemas", "check", "/no/such/dir", "--url", &url])?;
    assert_eq!(code, 2, "{stderr}");
    Ok(())
}

#[test]
fn without_kafka_the_registry_waits_not_ready_and_stops_cleanly() -> anyhow::Result<()> {
    let port = millrace_integration_tests::free_port();
    let mut child = Command::new(millrace_integration_tests::millrace_bin())
        .args(["registry", "--listen", &format!("127.0.0.1:{port}")])
        // Nothing listens on port 1.
        .args(["--bootstrap", "127.0.0.1:1", "--topic", "_schemas"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let client = reqwest::blocking::Client::new();
    let get = |path: &str| -> anyhow::Result<(u16, String)> {
        let response = client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .timeout(Duration::from_secs(5))
            .send()?;
        Ok((response.status().as_u16(), response.text()?))
    };
    eventually("the endpoint answers", || Ok(get("/healthz").is_ok()))?;
    assert_eq!(get("/healthz")?.0, 200, "alive while waiting");
    let (status, why) = get("/readyz")?;
    assert_eq!(status, 503);
    assert!(why.contains("127.0.0.1:1"), "{why}");
    let (status, body) = get("/subjects")?;
    assert_eq!(status, 503);
    assert_eq!(serde_json::from_str::<Value>(&body)?["error_code"], 503);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            child.kill()?;
            anyhow::bail!("no exit within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    Ok(())
}

#[test]
fn confluent_python_client_works_against_the_registry() -> anyhow::Result<()> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let present = Command::new(&python)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !present {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{python} is missing; CI must run the Python client test");
        }
        eprintln!("skipping: {python} is not installed");
        return Ok(());
    }
    let registry = Registry::start(&unique("schemas-python"))?;
    let script = repo_root().join("integration-tests/python/registry_client.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(registry.url())
        .arg(unique("py"))
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed ({}); scripts/setup installs the client (or \
         `python3 -m pip install \"confluent-kafka[avro,schemaregistry]\"`) if it is missing\n\
         stdout:\n{stdout}\nstderr:\n{stderr}\nregistry log:\n{}",
        script.display(),
        output.status,
        registry.log_tail(30)
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    Ok(())
}
