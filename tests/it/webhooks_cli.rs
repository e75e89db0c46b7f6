//! `attio-webhooks webhooks ...` run as the real binary against the fake Attio on 127.0.0.1:0:
//! pagination, slug resolution, the bodies sent (checked field by field and against Attio's
//! OpenAPI), Attio's errors as the user sees them, and what is refused before any request.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};

use serde_json::{json, Value};

use crate::contract::check_request;
use crate::fake_attio::{FakeAttio, Seen, API_KEY};
use crate::helpers::{binary, free_port};

const DEALS: &str = "97052eb9-e65e-443f-a297-f2d9a4a7f795";
const PEOPLE: &str = "6a3d5e81-0de0-4e96-a535-957b28ba8211";
const STAGE: &str = "41252299-f8c7-4b5e-99c9-4ff8321d2f96";
const AMOUNT: &str = "5bd3b1a4-5a1d-4a43-8f2e-3b3c0e7d9a10";
const PIPELINE: &str = "33ebdbe9-e529-47c9-b894-0ba25e9c15c0";
const PIPELINE_STAGE: &str = "9e0f6a2b-8c1d-4e3f-a5b7-c9d1e3f5a7b9";
/// What the fake answers as every new webhook's secret.
const FAKE_SECRET: &str = "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb";
const TARGET: &str = "https://hooks.example.com/webhooks/attio";

/// A fake workspace with the objects `deals` and `people`, the list `sales_pipeline`, and
/// attributes `stage`/`amount` on deals and `stage` on the list.
async fn workspace() -> FakeAttio {
    let fake = FakeAttio::start().await;
    fake.set_objects(&[(DEALS, "deals"), (PEOPLE, "people")]);
    fake.set_lists(&[(PIPELINE, "sales_pipeline")]);
    fake.set_attributes(DEALS, &[(STAGE, "stage"), (AMOUNT, "amount")]);
    fake.set_attributes(PIPELINE, &[(PIPELINE_STAGE, "stage")]);
    fake
}

/// Runs `attio-webhooks webhooks ARGS --base-url FAKE` with a clean environment holding
/// `ATTIO_API_KEY=api_key`, standard input a pipe (not a terminal).
async fn webhooks(fake: &FakeAttio, api_key: &str, args: &[&str]) -> Output {
    webhooks_at(&fake.base_url(), api_key, args).await
}

/// As [`webhooks`], against any `--base-url`.
async fn webhooks_at(base_url: &str, api_key: &str, args: &[&str]) -> Output {
    let workdir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(binary());
    command
        .arg("webhooks")
        .args(args)
        .args(["--base-url", base_url])
        .current_dir(workdir.path())
        .env_clear()
        .env("APP_ENV", "test")
        .env(
            "APP_CONFIG_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
        )
        .env("ATTIO_API_KEY", api_key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().expect("binary starts");
    child.wait_with_output().await.unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn requests(fake: &FakeAttio, method: &str, path: &str) -> Vec<Seen> {
    fake.seen()
        .into_iter()
        .filter(|s| s.method.as_str() == method && s.path == path)
        .collect()
}

/// Every request the fake saw must be one Attio's OpenAPI accepts.
fn assert_valid_for_attio(fake: &FakeAttio) {
    let problems: Vec<String> = fake
        .seen()
        .iter()
        .filter_map(|seen| check_request(seen).err())
        .collect();
    assert!(
        problems.is_empty(),
        "requests Attio would refuse:\n{}",
        problems.join("\n")
    );
}

#[tokio::test]
async fn list_walks_every_page() {
    let fake = workspace().await;
    fake.add_webhooks(150);
    let output = webhooks(&fake, API_KEY, &["list", "--json"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let listed: Vec<Value> = serde_json::from_str(&stdout(&output)).unwrap();
    let ids = |webhooks: &[Value]| {
        webhooks
            .iter()
            .map(|w| w["id"]["webhook_id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(listed.len(), 150);
    assert_eq!(ids(&listed), ids(&fake.webhooks()));
    let pages: Vec<Option<String>> = requests(&fake, "GET", "/v2/webhooks")
        .into_iter()
        .map(|s| s.query)
        .collect();
    assert_eq!(
        pages,
        vec![
            Some("limit=100&offset=0".to_string()),
            Some("limit=100&offset=100".to_string())
        ]
    );

    let output = webhooks(&fake, API_KEY, &["list"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let table = stdout(&output);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("SUBSCRIPTIONS"), "{table}");
    assert!(table.trim_end().ends_with("150 webhooks"), "{table}");
    assert_eq!(table.lines().count(), 1 + 150 + 1);
    assert_valid_for_attio(&fake);
}

#[tokio::test]
async fn create_resolves_slugs_and_sends_attios_shape() {
    let fake = workspace().await;
    let output = webhooks(
        &fake,
        API_KEY,
        &[
            "create",
            "--url",
            TARGET,
            "--event",
            "record.updated",
            "--object",
            "deals",
            "--attribute",
            "stage",
        ],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));

    // The slugs were resolved through the API first: the object among the workspace's objects,
    // the attribute among that object's attributes.
    assert_eq!(requests(&fake, "GET", "/v2/objects").len(), 1);
    assert_eq!(
        requests(&fake, "GET", &format!("/v2/objects/{DEALS}/attributes")).len(),
        1
    );
    let posts = requests(&fake, "POST", "/v2/webhooks");
    assert_eq!(posts.len(), 1);
    let body = posts[0].body.clone().unwrap();
    let data = &body["data"];
    assert_eq!(data.as_object().unwrap().len(), 2, "{body}");
    assert_eq!(data["target_url"], TARGET);
    let subscriptions = data["subscriptions"].as_array().unwrap();
    assert_eq!(subscriptions.len(), 1);
    assert_eq!(subscriptions[0]["event_type"], "record.updated");
    let conditions = subscriptions[0]["filter"]["$and"].as_array().unwrap();
    assert_eq!(subscriptions[0]["filter"].as_object().unwrap().len(), 1);
    assert_eq!(
        conditions,
        &vec![
            json!({"field": "id.object_id", "operator": "equals", "value": DEALS}),
            json!({"field": "id.attribute_id", "operator": "equals", "value": STAGE}),
        ]
    );
    assert_valid_for_attio(&fake);

    // The secret is shown once, clearly, with what to do with it.
    let shown = stdout(&output);
    assert_eq!(shown.matches(FAKE_SECRET).count(), 1, "{shown}");
    assert!(shown.contains("never shows it again"), "{shown}");
    assert!(shown.contains("ATTIO_WEBHOOK_SECRET"), "{shown}");
    assert!(
        shown.contains(&format!("(object deals is {DEALS})")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "id.object_id = {DEALS} and id.attribute_id = {STAGE}"
        )),
        "{shown}"
    );
    assert!(!stderr(&output).contains(FAKE_SECRET));
}

#[tokio::test]
async fn a_pattern_with_a_list_attribute_and_a_secret_file() {
    let fake = workspace().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("attio.secret");
    let secret_path = secret_file.to_str().unwrap();
    let args = [
        "create",
        "--url",
        TARGET,
        "--event",
        "list-entry.*",
        "--list",
        "sales_pipeline",
        "--attribute",
        "stage",
        "--secret-file",
        secret_path,
        "--json",
    ];
    let output = webhooks(&fake, API_KEY, &args).await;
    assert!(output.status.success(), "{}", stderr(&output));

    // Only list-entry.updated names an attribute; `stage` was looked up within the list.
    assert_eq!(
        requests(&fake, "GET", &format!("/v2/lists/{PIPELINE}/attributes")).len(),
        1
    );
    let body = requests(&fake, "POST", "/v2/webhooks")[0]
        .body
        .clone()
        .unwrap();
    assert_eq!(
        body["data"]["subscriptions"],
        json!([{"event_type": "list-entry.updated", "filter": {"$and": [
            {"field": "id.list_id", "operator": "equals", "value": PIPELINE},
            {"field": "id.attribute_id", "operator": "equals", "value": PIPELINE_STAGE}
        ]}}])
    );
    assert_valid_for_attio(&fake);

    // The secret went to the file, readable by its owner only, and not to the terminal.
    assert_eq!(
        std::fs::read_to_string(&secret_file).unwrap(),
        format!("{FAKE_SECRET}\n")
    );
    let mode = std::fs::metadata(&secret_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let printed: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(printed["secret_file"], secret_path);
    assert!(printed.get("secret").is_none());
    assert!(!stdout(&output).contains(FAKE_SECRET));

    // An existing file is not overwritten, and nothing is created in Attio then.
    let before = fake.seen().len();
    let again = webhooks(&fake, API_KEY, &args).await;
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(fake.seen().len(), before);
    assert_eq!(
        std::fs::read_to_string(&secret_file).unwrap(),
        format!("{FAKE_SECRET}\n")
    );
}

#[tokio::test]
async fn an_unknown_slug_is_refused_listing_the_valid_ones() {
    let fake = workspace().await;
    let output = webhooks(
        &fake,
        API_KEY,
        &[
            "create",
            "--url",
            TARGET,
            "--event",
            "record.created",
            "--object",
            "deal",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("no object \"deal\"")
            && message.contains("did you mean \"deals\"")
            && message.contains("deals, people"),
        "{message}"
    );
    assert!(requests(&fake, "POST", "/v2/webhooks").is_empty());

    let output = webhooks(
        &fake,
        API_KEY,
        &[
            "create",
            "--url",
            TARGET,
            "--event",
            "record.updated",
            "--object",
            "deals",
            "--attribute",
            "stag",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("no attribute \"stag\" in object deals")
            && message.contains("amount, stage"),
        "{message}"
    );
    assert!(requests(&fake, "POST", "/v2/webhooks").is_empty());
}

#[tokio::test]
async fn update_replaces_the_url_and_the_subscriptions_with_a_valid_body() {
    let fake = workspace().await;
    fake.add_webhooks(1);
    let id = fake.webhooks()[0]["id"]["webhook_id"]
        .as_str()
        .unwrap()
        .to_string();
    let moved = "https://hooks.example.com/v2/attio";
    let output = webhooks(
        &fake,
        API_KEY,
        &[
            "update",
            &id,
            "--url",
            moved,
            "--event",
            "note.created",
            "--event",
            "task.created",
            "--object",
            PEOPLE,
            "--json",
        ],
    )
    .await;
    // task.created carries no object: refused before any request.
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("task.created events carry no object"),
        "{}",
        stderr(&output)
    );
    assert!(fake.seen().is_empty());

    let output = webhooks(
        &fake,
        API_KEY,
        &[
            "update",
            &id,
            "--url",
            moved,
            "--event",
            "note.created",
            "--object",
            PEOPLE,
            "--json",
        ],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let patches = requests(&fake, "PATCH", &format!("/v2/webhooks/{id}"));
    assert_eq!(patches.len(), 1);
    assert_eq!(
        patches[0].body.clone().unwrap(),
        json!({"data": {"target_url": moved, "subscriptions": [
            {"event_type": "note.created", "filter": {"$and": [
                {"field": "parent_object_id", "operator": "equals", "value": PEOPLE}
            ]}}
        ]}})
    );
    // A UUID needs no look-up.
    assert!(requests(&fake, "GET", "/v2/objects").is_empty());
    let printed: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(printed["target_url"], moved);

    // Only the URL: the subscriptions are left alone (not sent).
    let output = webhooks(&fake, API_KEY, &["update", &id, "--url", TARGET]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let patches = requests(&fake, "PATCH", &format!("/v2/webhooks/{id}"));
    assert_eq!(
        patches[1].body.clone().unwrap(),
        json!({"data": {"target_url": TARGET}})
    );
    assert!(
        stdout(&output).contains("parent_object_id"),
        "{}",
        stdout(&output)
    );
    assert_valid_for_attio(&fake);
}

#[tokio::test]
async fn a_rejected_api_key_says_to_check_it_and_its_scope() {
    let fake = workspace().await;
    let wrong = "wrong-key-abcdef";
    let output = webhooks(&fake, wrong, &["list"]).await;
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("401")
            && message.contains("unauthorized")
            && message.contains("Invalid API key"),
        "Attio's status, code and message: {message}"
    );
    assert!(
        message.contains("ATTIO_API_KEY") && message.contains("webhook:read-write"),
        "{message}"
    );
    assert!(!message.contains(wrong) && !stdout(&output).contains(wrong));
}

#[tokio::test]
async fn an_identical_subscription_is_reported_as_a_conflict() {
    let fake = workspace().await;
    let args = ["create", "--url", TARGET, "--event", "task.created"];
    let first = webhooks(&fake, API_KEY, &args).await;
    assert!(first.status.success(), "{}", stderr(&first));
    let second = webhooks(&fake, API_KEY, &args).await;
    assert_eq!(second.status.code(), Some(1));
    let message = stderr(&second);
    assert!(
        message.contains("409") && message.contains("uniqueness_conflict"),
        "{message}"
    );
    assert!(message.contains("identical subscription"), "{message}");
    assert_eq!(fake.webhooks().len(), 1);
    assert!(!stdout(&second).contains(FAKE_SECRET));
}

#[tokio::test]
async fn delete_with_yes_deletes_and_without_a_terminal_refuses() {
    let fake = workspace().await;
    fake.add_webhooks(2);
    let id = fake.webhooks()[0]["id"]["webhook_id"]
        .as_str()
        .unwrap()
        .to_string();

    let refused = webhooks(&fake, API_KEY, &["delete", &id]).await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("--yes"), "{}", stderr(&refused));
    assert!(fake.seen().is_empty(), "nothing asked of Attio");
    assert_eq!(fake.webhooks().len(), 2);

    let deleted = webhooks(&fake, API_KEY, &["delete", &id, "--yes"]).await;
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert!(stdout(&deleted).contains(&id));
    assert_eq!(
        requests(&fake, "DELETE", &format!("/v2/webhooks/{id}")).len(),
        1
    );
    let left: Vec<Value> = fake.webhooks();
    assert_eq!(left.len(), 1);
    assert_ne!(left[0]["id"]["webhook_id"], id.as_str());

    let again = webhooks(&fake, API_KEY, &["delete", &id, "--yes"]).await;
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("404"), "{}", stderr(&again));
    assert_valid_for_attio(&fake);
}

#[tokio::test]
async fn a_plain_http_target_is_refused_before_asking_attio() {
    let fake = workspace().await;
    let output = webhooks(
        &fake,
        API_KEY,
        &[
            "create",
            "--url",
            "http://hooks.example.com/webhooks/attio",
            "--event",
            "record.updated",
            "--object",
            "deals",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("not https"), "{message}");
    assert!(fake.seen().is_empty(), "no request reached Attio");
}

#[tokio::test]
async fn invented_event_types_are_refused_before_asking_attio() {
    let fake = workspace().await;
    let output = webhooks(
        &fake,
        API_KEY,
        &[
            "create",
            "--url",
            TARGET,
            "--event",
            "workspace-member.updated",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("Attio has no \"workspace-member.updated\" event"),
        "{message}"
    );

    let output = webhooks(
        &fake,
        API_KEY,
        &["create", "--url", TARGET, "--event", "record.update"],
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("did you mean \"record.updated\""),
        "{}",
        stderr(&output)
    );
    assert!(fake.seen().is_empty(), "no request reached Attio");
}

#[tokio::test]
async fn an_unreachable_attio_is_reported_with_the_cause_and_no_breaker_words() {
    let refused = format!("http://127.0.0.1:{}", free_port());
    let output = webhooks_at(&refused, API_KEY, &["list"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("Connection refused"), "{message}");
    assert!(message.contains("cannot reach Attio"), "{message}");
    // The breaker's "next try in ..." means nothing to a command that exits.
    assert!(!message.contains("circuit breaker"), "{message}");
    assert!(!message.contains("next try"), "{message}");
    assert!(
        message.contains("hint: Attio could not be reached"),
        "{message}"
    );

    // A name that does not resolve (`.invalid` never does) says it was DNS.
    let output = webhooks_at("http://attio-webhooks-test.invalid", API_KEY, &["list"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("dns error"), "{message}");
    assert!(!message.contains("circuit breaker"), "{message}");
}

#[tokio::test]
async fn a_list_entry_attribute_is_looked_up_in_the_list_not_in_the_parent_object() {
    let fake = workspace().await;
    // People have a `stage` of their own: the wrong one for list entries.
    fake.set_attributes(PEOPLE, &[(STAGE, "stage")]);
    let output = webhooks(
        &fake,
        API_KEY,
        &[
            "create",
            "--url",
            TARGET,
            "--event",
            "list-entry.updated",
            "--object",
            "people",
            "--list",
            "sales_pipeline",
            "--attribute",
            "stage",
        ],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        requests(&fake, "GET", &format!("/v2/lists/{PIPELINE}/attributes")).len(),
        1
    );
    assert!(requests(&fake, "GET", &format!("/v2/objects/{PEOPLE}/attributes")).is_empty());
    let body = requests(&fake, "POST", "/v2/webhooks")[0]
        .body
        .clone()
        .unwrap();
    assert_eq!(
        body["data"]["subscriptions"],
        json!([{"event_type": "list-entry.updated", "filter": {"$and": [
            {"field": "parent_object_id", "operator": "equals", "value": PEOPLE},
            {"field": "id.list_id", "operator": "equals", "value": PIPELINE},
            {"field": "id.attribute_id", "operator": "equals", "value": PIPELINE_STAGE}
        ]}}])
    );
    assert_valid_for_attio(&fake);
}

#[tokio::test]
async fn an_attribute_on_list_entry_events_without_a_list_is_refused_before_asking_attio() {
    let fake = workspace().await;
    for events in [
        &["--event", "list-entry.updated"][..],
        &["--event", "record.updated", "--event", "list-entry.updated"][..],
    ] {
        let mut args = vec!["create", "--url", TARGET];
        args.extend_from_slice(events);
        args.extend_from_slice(&["--object", "people", "--attribute", "company"]);
        let output = webhooks(&fake, API_KEY, &args).await;
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        let message = stderr(&output);
        assert!(
            message.contains("add --list") && message.contains("list-entry.updated"),
            "{message}"
        );
    }
    assert!(fake.seen().is_empty(), "nothing was asked of Attio");
}
