//! Contract check: every request the Attio client makes is valid for Attio's OpenAPI description
//! (a copy in `tests/contract/openapi.yaml`). The client calls a fake Attio that records what it
//! receives; each recorded request must match a documented path and method, its path and query
//! parameters must satisfy their schemas, and its JSON body must satisfy the request-body schema
//! (JSON Schema 2020-12, formats checked).

use std::sync::OnceLock;

use attio_webhooks::attio::models::{
    FilterCondition, FilterOperator, NewWebhook, Subscription, WebhookFilter, WebhookUpdate,
};
use attio_webhooks::attio::{AttioClient, AttributeParent};
use attio_webhooks::config::Settings;
use serde_json::{json, Value};

use crate::fake_attio::{FakeAttio, Seen};

const OBJECT: &str = "97052eb9-e65e-443f-a297-f2d9a4a7f795";
const RECORD: &str = "bf071e1f-6035-429d-b874-d83ea64ea13b";
const LIST: &str = "33ebdbe9-e529-47c9-b894-0ba25e9c15c0";
const ENTRY: &str = "2e6e29ea-c4e0-4f44-842d-78a891f8c156";
const ATTRIBUTE: &str = "41252299-f8c7-4b5e-99c9-4ff8321d2f96";
const NOTE: &str = "ff3f3bd4-40f4-4f80-8187-cd02385af424";
const TASK: &str = "649e34f4-c39a-4f4d-99ef-48a36bef8f04";
const COMMENT: &str = "aa1dc1d9-93ac-4c6c-987e-16b6eea9aab2";
const MEMBER: &str = "50cf242c-7fa3-4cad-87d0-75b1af71c57b";
const MEETING: &str = "a5b5a9f0-3c6e-4a2b-9f1e-2d7c8b6a5e4d";
const RECORDING: &str = "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f";

fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/contract/openapi.yaml");
        let text = std::fs::read_to_string(path).expect("tests/contract/openapi.yaml");
        serde_yaml_ng::from_str(&text).expect("the OpenAPI copy is valid YAML")
    })
}

/// Replaces local `$ref`s by what they point to (Attio's spec refers into components).
fn resolve(value: &Value, depth: usize) -> Value {
    assert!(depth < 32, "reference cycle in the spec");
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                let target = spec()
                    .pointer(reference.trim_start_matches('#'))
                    .unwrap_or_else(|| panic!("dangling $ref {reference}"));
                return resolve(target, depth + 1);
            }
            Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), resolve(v, depth + 1)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| resolve(v, depth + 1)).collect()),
        other => other.clone(),
    }
}

fn check_schema(schema: &Value, instance: &Value, what: &str) -> Result<(), String> {
    let schema = resolve(schema, 0);
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&schema)
        .map_err(|e| format!("{what}: schema does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: {}", errors.join("; ")))
    }
}

fn decode(segment: &str) -> String {
    // Minimal percent-decoding, enough for ids.
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
            if let Ok(byte) = u8::from_str_radix(hex, 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// Path parameters by name, with their decoded values.
type PathParams = Vec<(String, String)>;

/// The documented path template matching `path`, and its path parameters. Literal segments win
/// over parameters when several templates match.
fn match_path(path: &str) -> Option<(String, PathParams)> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let paths = spec()["paths"].as_object()?;
    let mut best: Option<(usize, String, PathParams)> = None;
    for template in paths.keys() {
        let parts: Vec<&str> = template.trim_start_matches('/').split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut params = Vec::new();
        let mut literal = 0;
        let matches = parts.iter().zip(&segments).all(|(part, segment)| {
            if part.starts_with('{') && part.ends_with('}') {
                params.push((part[1..part.len() - 1].to_string(), decode(segment)));
                true
            } else if part == segment {
                literal += 1;
                true
            } else {
                false
            }
        });
        if matches && best.as_ref().is_none_or(|(l, _, _)| literal > *l) {
            best = Some((literal, template.clone(), params));
        }
    }
    best.map(|(_, template, params)| (template, params))
}

/// Checks one recorded request against the spec. Returns the `METHOD template` it matched.
pub(crate) fn check_request(request: &Seen) -> Result<String, String> {
    let (template, path_params) =
        match_path(&request.path).ok_or(format!("{} is not a documented path", request.path))?;
    let item = &spec()["paths"][&template];
    let method = request.method.as_str().to_lowercase();
    let operation = item.get(&method).ok_or(format!(
        "{} {template} is not a documented operation",
        request.method
    ))?;
    let parameters: Vec<Value> = [item.get("parameters"), operation.get("parameters")]
        .into_iter()
        .flatten()
        .filter_map(Value::as_array)
        .flatten()
        .map(|p| resolve(p, 0))
        .collect();
    let declared = |name: &str, place: &str| {
        parameters
            .iter()
            .find(|p| p["name"] == name && p["in"] == place)
            .cloned()
    };
    for (name, value) in &path_params {
        let parameter =
            declared(name, "path").ok_or(format!("{template}: no path parameter {name}"))?;
        check_schema(
            &parameter["schema"],
            &json!(value),
            &format!("path parameter {name}"),
        )?;
    }
    let query: Vec<(String, String)> = request
        .query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect();
    for (name, value) in &query {
        let parameter = declared(name, "query").ok_or(format!(
            "{} {template}: undocumented query parameter {name}",
            request.method
        ))?;
        let typed = match parameter["schema"]["type"].as_str() {
            Some("integer") | Some("number") => value
                .parse::<i64>()
                .map(|n| json!(n))
                .map_err(|_| format!("query {name}={value} is not a number"))?,
            Some("boolean") => json!(value == "true"),
            _ => json!(value),
        };
        check_schema(
            &parameter["schema"],
            &typed,
            &format!("query parameter {name}"),
        )?;
    }
    for parameter in &parameters {
        if parameter["required"] == true && parameter["in"] == "query" {
            let name = parameter["name"].as_str().unwrap_or_default();
            if !query.iter().any(|(k, _)| k == name) {
                return Err(format!(
                    "{template}: required query parameter {name} missing"
                ));
            }
        }
    }
    match (&request.body, operation.get("requestBody")) {
        (Some(body), Some(request_body)) => {
            let request_body = resolve(request_body, 0);
            let schema = &request_body["content"]["application/json"]["schema"];
            check_schema(schema, body, &format!("{} {template} body", request.method))?;
            let content_type = request
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !content_type.starts_with("application/json") {
                return Err(format!("{template}: body sent as {content_type:?}"));
            }
        }
        (None, Some(request_body)) if request_body["required"] == true => {
            return Err(format!("{} {template} requires a body", request.method));
        }
        (Some(_), None) => {
            return Err(format!("{} {template} takes no body", request.method));
        }
        _ => {}
    }
    if request.raw_body.is_empty() != request.body.is_none() {
        return Err(format!("{template}: a body that is not JSON"));
    }
    Ok(format!("{} {template}", request.method))
}

fn client_for(fake: &FakeAttio) -> AttioClient {
    let settings = Settings::from_toml_layers(
        "test",
        &["[webhook]\nsecrets = [\"s\"]", &fake.attio_toml("")],
    )
    .unwrap();
    AttioClient::new(&settings.attio, settings.attio.api_key.as_ref().unwrap()).unwrap()
}

/// Calls every method of the client once (both forms where a body varies).
async fn exercise_every_call(client: &AttioClient, fake: &FakeAttio) {
    client.get_record(OBJECT, RECORD).await.unwrap();
    client.get_list_entry(LIST, ENTRY).await.unwrap();
    client.get_note(NOTE).await.unwrap();
    client.get_task(TASK).await.unwrap();
    client.get_comment(COMMENT).await.unwrap();
    client.get_list(LIST).await.unwrap();
    client.get_object(OBJECT).await.unwrap();
    client
        .get_attribute(AttributeParent::Object, OBJECT, ATTRIBUTE)
        .await
        .unwrap();
    client
        .get_attribute(AttributeParent::List, LIST, ATTRIBUTE)
        .await
        .unwrap();
    client
        .list_attributes(AttributeParent::Object, OBJECT)
        .await
        .unwrap();
    client
        .list_attributes(AttributeParent::List, LIST)
        .await
        .unwrap();
    client.list_objects().await.unwrap();
    client.list_lists().await.unwrap();
    client.get_workspace_member(MEMBER).await.unwrap();
    client.get_call_recording(MEETING, RECORDING).await.unwrap();
    client.identify().await.unwrap();

    fake.add_webhooks(3);
    client.list_webhooks(5, 0).await.unwrap();
    client.list_all_webhooks().await.unwrap();
    let plain = client
        .create_webhook(&NewWebhook {
            target_url: "https://example.com/attio".into(),
            subscriptions: vec![Subscription {
                event_type: "record.updated".into(),
                filter: None,
            }],
        })
        .await
        .unwrap();
    let condition = |operator| FilterCondition {
        field: "id.object_id".into(),
        operator,
        value: OBJECT.into(),
    };
    client
        .create_webhook(&NewWebhook {
            target_url: "https://example.com/attio/filtered".into(),
            subscriptions: vec![
                Subscription {
                    event_type: "list-entry.updated".into(),
                    filter: Some(WebhookFilter::All(vec![condition(FilterOperator::Equals)])),
                },
                Subscription {
                    event_type: "record.created".into(),
                    filter: Some(WebhookFilter::Any(vec![
                        condition(FilterOperator::Equals),
                        condition(FilterOperator::NotEquals),
                    ])),
                },
            ],
        })
        .await
        .unwrap();
    let id = plain.webhook.id.webhook_id.clone();
    client.get_webhook(&id).await.unwrap();
    client
        .update_webhook(
            &id,
            &WebhookUpdate {
                target_url: Some("https://example.com/attio/moved".into()),
                subscriptions: None,
            },
        )
        .await
        .unwrap();
    client
        .update_webhook(
            &id,
            &WebhookUpdate {
                target_url: None,
                subscriptions: Some(vec![Subscription {
                    event_type: "task.created".into(),
                    filter: None,
                }]),
            },
        )
        .await
        .unwrap();
    client.delete_webhook(&id).await.unwrap();
}

#[tokio::test]
async fn every_request_the_client_makes_is_valid_for_attios_openapi() {
    let fake = FakeAttio::start().await;
    let client = client_for(&fake);
    exercise_every_call(&client, &fake).await;
    let seen = fake.seen();
    let mut problems = Vec::new();
    let mut operations = std::collections::BTreeSet::new();
    for request in &seen {
        match check_request(request) {
            Ok(operation) => {
                operations.insert(operation);
            }
            Err(problem) => problems.push(problem),
        }
    }
    assert!(
        problems.is_empty(),
        "requests Attio would refuse:\n{}",
        problems.join("\n")
    );
    // Every operation the client knows was checked (19 of them).
    assert_eq!(operations.len(), 19, "{operations:#?}");
}

#[test]
fn the_contract_check_refuses_requests_that_break_the_spec() {
    let request = |method: &str, path: &str, query: Option<&str>, body: Option<Value>| Seen {
        method: method.parse().unwrap(),
        path: path.to_string(),
        query: query.map(str::to_string),
        raw_body: body
            .as_ref()
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default(),
        body,
        headers: {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert("content-type", "application/json".parse().unwrap());
            headers
        },
        at: std::time::SystemTime::now(),
        instant: std::time::Instant::now(),
    };
    let refused = |seen: Seen, expected: &str| {
        let error = check_request(&seen).expect_err(expected);
        assert!(
            error.contains(expected),
            "expected {expected:?} in: {error}"
        );
    };
    // The filter must be sent, even as null.
    let no_filter = json!({"data": {"target_url": "https://example.com/a",
        "subscriptions": [{"event_type": "record.updated"}]}});
    refused(
        request("POST", "/v2/webhooks", None, Some(no_filter)),
        "\"filter\" is a required property",
    );
    // Attio refuses plain http targets.
    let http = json!({"data": {"target_url": "http://example.com/a",
        "subscriptions": [{"event_type": "record.updated", "filter": null}]}});
    refused(
        request("POST", "/v2/webhooks", None, Some(http)),
        "target_url",
    );
    // `$eq` is a myth (docs/attio.md, "Guides that get it wrong").
    let myth = json!({"data": {"target_url": "https://example.com/a",
        "subscriptions": [{"event_type": "record.updated",
            "filter": {"$and": [{"field": "id.object_id", "operator": "$eq", "value": "x"}]}}]}});
    refused(request("POST", "/v2/webhooks", None, Some(myth)), "filter");
    refused(
        request("GET", "/v2/webhooks/not-a-uuid", None, None),
        "webhook_id",
    );
    refused(
        request("GET", "/v2/records", None, None),
        "not a documented path",
    );
    refused(
        request("PUT", "/v2/webhooks", None, None),
        "not a documented operation",
    );
    refused(
        request("GET", "/v2/webhooks", Some("page=2"), None),
        "undocumented query parameter page",
    );
    let good = json!({"data": {"target_url": "https://example.com/a",
        "subscriptions": [{"event_type": "record.updated", "filter": null}]}});
    assert!(check_request(&request("POST", "/v2/webhooks", None, Some(good))).is_ok());
}
