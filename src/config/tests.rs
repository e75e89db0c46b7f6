//! Unit tests of loading, validating and redacting the settings (the messages a user reads).

use super::load::resolve_environment;
use super::*;
use crate::redact::{redact_quoted_values, redacted_url};
use crate::routing::settings::RouteEnrich;

#[test]
fn embedded_defaults_with_a_secret_are_valid() {
    let settings = Settings::from_toml("test", "[webhook]\nsecrets = [\"s\"]").unwrap();
    assert_eq!(settings.server.listen, "127.0.0.1:8080");
    assert_eq!(settings.server.path, "/webhooks/attio");
    assert_eq!(settings.server.body_limit, 1024 * 1024);
    assert_eq!(settings.dedupe.done_ttl, Duration::from_secs(4 * 86400));
    assert!(settings.redis.url.is_none());
}

#[test]
fn no_secret_refuses_to_start_naming_the_variable() {
    let error = Settings::from_toml("test", "").unwrap_err();
    assert!(
        error.to_string().contains("ATTIO_WEBHOOK_SECRET"),
        "{error}"
    );
}

#[test]
fn development_secret_is_refused_in_production() {
    let toml = format!("[webhook]\nsecrets = [\"{DEVELOPMENT_SECRET}\"]");
    assert!(Settings::from_toml("development", &toml).is_ok());
    let error = Settings::from_toml("production", &toml).unwrap_err();
    assert!(matches!(error, ConfigError::DevelopmentSecretInProduction));
}

#[test]
fn invalid_listen_address_names_the_key() {
    let error = Settings::from_toml(
        "test",
        "[webhook]\nsecrets=[\"s\"]\n[server]\nlisten=\"nope\"",
    )
    .unwrap_err();
    assert!(error.to_string().contains("server.listen"), "{error}");
}

#[test]
fn unknown_key_is_rejected() {
    let error = Settings::from_toml(
        "test",
        "[webhook]\nsecrets=[\"s\"]\n[server]\nlisten_on=\"x\"",
    )
    .unwrap_err();
    assert!(error.to_string().contains("listen_on"), "{error}");
}

#[test]
fn bad_duration_names_the_key() {
    let error = Settings::from_toml(
        "test",
        "[webhook]\nsecrets=[\"s\"]\n[dedupe]\ndone_ttl=\"four days\"",
    )
    .unwrap_err();
    assert!(error.to_string().contains("done_ttl"), "{error}");
}

#[test]
fn an_empty_log_queue_is_refused_with_its_key() {
    let error = Settings::from_toml("test", "[webhook]\nsecrets=[\"s\"]\n[log]\nqueue_lines=0")
        .unwrap_err();
    assert!(error.to_string().contains("log.queue_lines"), "{error}");
}

#[test]
fn route_to_unknown_sink_names_the_route() {
    let error = Settings::from_toml(
        "test",
        "[webhook]\nsecrets=[\"s\"]\n[[routes]]\nname=\"r1\"\nevents=[\"*\"]\nsinks=[\"nowhere\"]",
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("r1") && text.contains("nowhere"), "{text}");
}

#[test]
fn without_routes_every_event_goes_to_stdout() {
    let settings = Settings::from_toml("test", "[webhook]\nsecrets=[\"s\"]").unwrap();
    let routes = settings.effective_routes();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].events, vec!["*"]);
    assert!(matches!(
        settings.effective_sinks().get("stdout"),
        Some(SinkSettings {
            kind: SinkKind::Stdout {},
            ..
        })
    ));
}

#[test]
fn the_redis_queue_needs_a_redis_url_and_says_so() {
    let error = Settings::from_toml(
        "test",
        "[webhook]\nsecrets=[\"s\"]\n[queue]\nbackend=\"redis\"",
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("queue.backend") && text.contains("redis.url"),
        "{text}"
    );
    let settings = Settings::from_toml(
        "test",
        "[webhook]\nsecrets=[\"s\"]\n[queue]\nbackend=\"redis\"\n[redis]\nurl=\"redis://127.0.0.1:6379\"",
    )
    .unwrap();
    assert_eq!(settings.queue.backend, QueueBackend::Redis);
    let default = Settings::from_toml("test", "[webhook]\nsecrets=[\"s\"]").unwrap();
    assert_eq!(default.queue.backend, QueueBackend::Embedded);
}

#[test]
fn a_brace_in_the_key_prefix_is_refused_for_the_redis_queue() {
    let error = Settings::from_toml(
        "test",
        "[webhook]\nsecrets=[\"s\"]\n[queue]\nbackend=\"redis\"\n[redis]\nurl=\"redis://127.0.0.1:6379\"\nkey_prefix=\"a{b}\"",
    )
    .unwrap_err();
    assert!(error.to_string().contains("redis.key_prefix"), "{error}");
}

#[test]
fn attio_defaults_follow_attios_rate_limits_and_need_no_key() {
    let settings = Settings::from_toml("test", "[webhook]\nsecrets=[\"s\"]").unwrap();
    assert_eq!(settings.attio.base_url, "https://api.attio.com");
    assert_eq!(settings.attio.read_rate, 100);
    assert_eq!(settings.attio.write_rate, 25);
    assert!(settings.attio.api_key.is_none());
    assert!(settings.enrichment.coalesce_window < Duration::from_secs(1));
}

#[test]
fn an_empty_api_key_counts_as_none_and_a_real_one_is_redacted() {
    let empty =
        Settings::from_toml("test", "[webhook]\nsecrets=[\"s\"]\n[attio]\napi_key=\" \"").unwrap();
    assert!(empty.attio.api_key.is_none());
    let real = Settings::from_toml(
        "test",
        "[webhook]\nsecrets=[\"s\"]\n[attio]\napi_key=\"key-do-not-print\"",
    )
    .unwrap();
    assert!(real.attio.api_key.is_some());
    assert!(!format!("{real:?}").contains("key-do-not-print"));
}

#[test]
fn bad_attio_settings_name_the_key() {
    for (toml, key) in [
        ("[attio]\nbase_url=\"api.attio.com\"", "attio.base_url"),
        ("[attio]\nread_rate=0", "attio.read_rate"),
        ("[attio]\nretry_total=\"2m\"", "attio.retry_total"),
        ("[attio]\nbreaker_threshold=0", "attio.breaker_threshold"),
    ] {
        let error = Settings::from_toml_layers("test", &["[webhook]\nsecrets=[\"s\"]", toml])
            .unwrap_err()
            .to_string();
        assert!(error.contains(key), "{toml}: {error}");
    }
}

#[test]
fn routes_accept_true_false_and_optional_for_enrich() {
    let route = |value: &str| {
        Settings::from_toml(
            "test",
            &format!(
                "[webhook]\nsecrets=[\"s\"]\n[sinks.out]\nkind=\"stdout\"\n\
                 [[routes]]\nname=\"r\"\nevents=[\"*\"]\nsinks=[\"out\"]\n{value}"
            ),
        )
        .map(|s| s.routes[0].enrich)
    };
    assert_eq!(route("").unwrap(), RouteEnrich::Required);
    assert_eq!(route("enrich = true").unwrap(), RouteEnrich::Required);
    assert_eq!(route("enrich = false").unwrap(), RouteEnrich::Off);
    assert_eq!(
        route("enrich = \"optional\"").unwrap(),
        RouteEnrich::Optional
    );
    let error = route("enrich = \"sometimes\"").unwrap_err().to_string();
    assert!(error.contains("optional"), "{error}");
}

#[test]
fn secrets_are_redacted_in_debug_output() {
    let settings =
        Settings::from_toml("test", "[webhook]\nsecrets=[\"super-secret-value\"]").unwrap();
    assert!(!format!("{settings:?}").contains("super-secret-value"));
}

const SECRET_ONLY: &str = "[webhook]\nsecrets=[\"s\"]\n";

#[test]
fn route_filter_is_read_from_an_inline_table_and_from_a_json_string() {
    let table = format!(
        "{SECRET_ONLY}[sinks.a]\nkind=\"stdout\"\n[[routes]]\nname=\"t\"\nevents=[\"*\"]\nsinks=[\"a\"]\n\
         filter = {{ \"$and\" = [ {{ field = \"actor.type\", operator = \"equals\", value = \"Workspace-Member\" }} ] }}\n"
    );
    let settings = Settings::from_toml("test", &table).unwrap();
    assert_eq!(
        settings.routes[0].filter,
        Some(serde_json::json!({"$and": [
            {"field": "actor.type", "operator": "equals", "value": "Workspace-Member"}
        ]}))
    );
    let json = format!(
        "{SECRET_ONLY}[sinks.a]\nkind=\"stdout\"\n[[routes]]\nname=\"j\"\nevents=[\"*\"]\nsinks=[\"a\"]\n\
         filter = '{{\"$or\": [{{\"field\": \"id.object_id\", \"operator\": \"not_equals\", \"value\": \"x\"}}]}}'\n"
    );
    let settings = Settings::from_toml("test", &json).unwrap();
    assert!(matches!(
        &settings.routes[0].filter,
        Some(serde_json::Value::String(_))
    ));
}

#[test]
fn an_invalid_route_filter_stops_the_start_naming_the_route() {
    let toml = format!(
        "{SECRET_ONLY}[sinks.a]\nkind=\"stdout\"\n[[routes]]\nname=\"vip-only\"\nevents=[\"*\"]\nsinks=[\"a\"]\n\
         filter = {{ \"$and\" = [ {{ field = \"actor.type\", operator = \"contains\", value = \"x\" }} ] }}\n"
    );
    let error = Settings::from_toml("test", &toml).unwrap_err().to_string();
    assert!(
        error.contains("vip-only") && error.contains("contains"),
        "{error}"
    );
}

#[test]
fn route_object_list_and_attribute_take_one_value_or_a_list() {
    let toml = format!(
        "{SECRET_ONLY}[attio]\napi_key=\"k\"\n[sinks.a]\nkind=\"stdout\"\n\
         [[routes]]\nname=\"deals\"\nevents=[\"*\"]\nsinks=[\"a\"]\n\
         object = \"deals\"\nlist = [\"sales_pipeline\", \"33ebdbe9-e529-47c9-b894-0ba25e9c15c0\"]\n"
    );
    let settings = Settings::from_toml("test", &toml).unwrap();
    let route = &settings.routes[0];
    assert_eq!(route.object, Some(vec!["deals".to_string()]));
    assert_eq!(
        route.list,
        Some(vec![
            "sales_pipeline".to_string(),
            "33ebdbe9-e529-47c9-b894-0ba25e9c15c0".to_string()
        ])
    );
    assert_eq!(route.attribute, None);
    // They survive check-config's round trip through TOML.
    let shown = toml::to_string(&settings).unwrap();
    assert!(shown.contains("object = [\"deals\"]"), "{shown}");
}

#[test]
fn bad_route_object_list_or_attribute_stops_the_start_naming_the_route() {
    let route = |keys: &str, api_key: bool| {
        let attio = if api_key {
            "[attio]\napi_key=\"k\"\n"
        } else {
            ""
        };
        Settings::from_toml(
            "test",
            &format!(
                "{SECRET_ONLY}{attio}[sinks.a]\nkind=\"stdout\"\n\
                 [[routes]]\nname=\"narrow\"\nevents=[\"*\"]\nsinks=[\"a\"]\n{keys}\n"
            ),
        )
        .unwrap_err()
        .to_string()
    };
    for (keys, expected) in [
        ("object = \"\"", "`object` has an empty value"),
        ("list = []", "`list` is an empty list"),
        (
            "attribute = [\"stage\", \"  \"]",
            "`attribute` has an empty value",
        ),
        ("object = \"Deals\"", "neither a UUID nor an api slug"),
        (
            "object = \"sales pipeline\"",
            "neither a UUID nor an api slug",
        ),
        ("object = \"deals\"\nenrich = false", "enrich = true"),
        (
            "attribute = \"stage\"\nenrich = \"optional\"",
            "enrich = true",
        ),
        ("object = { slug = \"deals\" }", "object"),
    ] {
        let error = route(keys, true);
        assert!(
            error.contains("narrow") || expected == "object",
            "{keys}: {error}"
        );
        assert!(error.contains(expected), "{keys}: {error}");
    }
    // A slug needs the API key that resolves it; a UUID does not.
    let error = route("object = \"deals\"", false);
    assert!(
        error.contains("narrow") && error.contains("ATTIO_API_KEY"),
        "{error}"
    );
    let uuid_only = format!(
        "{SECRET_ONLY}[sinks.a]\nkind=\"stdout\"\n[[routes]]\nname=\"u\"\nevents=[\"*\"]\n\
         sinks=[\"a\"]\nenrich=false\nobject=\"97052eb9-e65e-443f-a297-f2d9a4a7f795\"\n"
    );
    assert!(Settings::from_toml("test", &uuid_only).is_ok());
}

#[test]
fn every_sink_kind_is_read_with_its_keys_and_retry_overrides() {
    let toml = format!(
        "{SECRET_ONLY}[redis]\nurl=\"redis://127.0.0.1:6379\"\n\
         [sinks.hook]\nkind=\"http\"\nurl=\"https://example.test/in\"\nsecret=\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
         timeout=\"3s\"\nmax_concurrency=4\nattempts=7\nretry_initial=\"2s\"\nretry_max=\"1m\"\n\
         headers={{ Authorization = \"Bearer t0ken\" }}\n\
         [sinks.stream]\nkind=\"redis_stream\"\nkey=\"attio:events\"\n\
         [sinks.script]\nkind=\"command\"\nprogram=\"/bin/sh\"\nargs=[\"-c\", \"cat\"]\n\
         [[routes]]\nname=\"all\"\nevents=[\"*\"]\nsinks=[\"hook\",\"stream\",\"script\"]\n"
    );
    let settings = Settings::from_toml("test", &toml).unwrap();
    let sinks = settings.effective_sinks();
    let hook = &sinks["hook"];
    let SinkKind::Http(http) = &hook.kind else {
        panic!("http sink expected");
    };
    assert_eq!(http.timeout, Duration::from_secs(3));
    assert_eq!(http.max_concurrency, Some(4));
    assert_eq!(
        http.headers["Authorization"].expose_secret(),
        "Bearer t0ken"
    );
    let policy = settings.sink_retry(&hook.retry);
    assert_eq!(
        policy,
        RetryPolicy {
            attempts: 7,
            initial: Duration::from_secs(2),
            max: Duration::from_secs(60)
        }
    );
    // The others inherit [worker] and redis.url.
    assert_eq!(
        settings.sink_retry(&sinks["script"].retry).attempts,
        settings.worker.max_attempts
    );
    let SinkKind::RedisStream(stream) = &sinks["stream"].kind else {
        panic!("redis_stream sink expected");
    };
    assert_eq!(
        stream.url.as_ref().map(|u| u.expose_secret().to_string()),
        Some("redis://127.0.0.1:6379".to_string())
    );
    assert_eq!(stream.maxlen, 1_000_000);
    let debug = format!("{settings:?}");
    assert!(
        !debug.contains("t0ken") && !debug.contains("MfKQ9r8"),
        "{debug}"
    );
}

#[test]
fn bad_sink_keys_name_the_sink_and_the_key() {
    let cases = [
        (
            "kind=\"http\"\nurl=\"https://x.test\"\nsecret=\"plain\"",
            "sinks.s.secret",
        ),
        ("kind=\"http\"\nurl=\"ftp://x.test\"", "sinks.s.url"),
        (
            "kind=\"http\"\nurl=\"https://x.test\"\ntimout=\"1s\"",
            "timout",
        ),
        (
            "kind=\"http\"\nurl=\"https://x.test\"\nheaders={ webhook-id = \"x\" }",
            "webhook-id",
        ),
        ("kind=\"redis_stream\"\nkey=\"k\"", "sinks.s.url"),
        ("kind=\"command\"\nprogram=\"\"", "sinks.s.program"),
        ("kind=\"stdout\"\nattempts=0", "sinks.s.attempts"),
        (
            "kind=\"stdout\"\nretry_initial=\"10m\"\nretry_max=\"1m\"",
            "sinks.s.retry_initial",
        ),
        ("kind=\"carrier-pigeon\"", "carrier-pigeon"),
    ];
    for (sink, expected) in cases {
        let toml = format!(
            "{SECRET_ONLY}[sinks.s]\n{sink}\n[[routes]]\nname=\"r\"\nevents=[\"*\"]\nsinks=[\"s\"]\n"
        );
        let error = Settings::from_toml("test", &toml).unwrap_err().to_string();
        assert!(error.contains(expected), "{sink}: {error}");
    }
}

#[test]
fn serialised_settings_redact_every_secret() {
    let settings = Settings::from_toml(
        "test",
        "[webhook]\nsecrets=[\"first-secret-text\", \"second-secret-text\"]\n\
         [redis]\nurl=\"redis://:hunter2-password@127.0.0.1:6379\"\n\
         [sinks.out]\nkind=\"http\"\nurl=\"http://user:url-password@127.0.0.1:9/x\"\nattempts=3\n\
         headers={Authorization=\"Bearer header-token-text\"}\n\
         [sinks.stream]\nkind=\"redis_stream\"\nkey=\"k\"\nurl=\"redis://:stream-password@h\"\n\
         [[routes]]\nname=\"r\"\nevents=[\"*\"]\nsinks=[\"out\",\"stream\"]",
    )
    .unwrap();
    let json = serde_json::to_string(&settings).unwrap();
    assert!(json.contains("[redacted: 2 secrets]"), "{json}");
    assert!(json.contains("\"url\":\"[redacted]\""), "{json}");
    assert!(json.contains("\"Authorization\":\"[redacted]\""), "{json}");
    assert!(json.contains("\"attempts\":3"), "{json}");
    for secret in [
        "first-secret-text",
        "second-secret-text",
        "hunter2-password",
        "header-token-text",
        "stream-password",
        "url-password",
    ] {
        assert!(!json.contains(secret), "{json}");
    }
    assert!(json.contains("http://redacted@127.0.0.1:9/x"), "{json}");
    let toml = toml::to_string_pretty(&settings).unwrap();
    assert!(toml.contains("[sinks.out]"), "{toml}");
}

#[test]
fn load_errors_name_the_key_without_quoting_the_value() {
    let error = Settings::from_toml("test", "[webhook]\nsecrets = \"not-a-list-secret\"")
        .unwrap_err()
        .to_string();
    assert!(error.contains("webhook.secrets"), "{error}");
    assert!(!error.contains("not-a-list-secret"), "{error}");

    let error = Settings::from_toml("test", "[webhook]\nsecrets = [\"unclosed-secret\"\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("line 2"), "{error}");
    assert!(!error.contains("unclosed-secret"), "{error}");
}

fn refusal(layer: &str) -> String {
    Settings::from_toml_layers("test", &[SECRET_ONLY, layer])
        .unwrap_err()
        .to_string()
}

#[test]
fn a_misspelt_log_level_is_refused_naming_the_valid_levels() {
    for level in ["warning", "debugg", "info,attio_webhooks=debugg", "verbose"] {
        let error = refusal(&format!("[log]\nlevel = {level:?}"));
        assert!(
            error.contains("log.level") && error.contains("trace, debug, info, warn, error"),
            "{level}: {error}"
        );
    }
    for level in [
        "warn",
        "WARN",
        "off",
        "info,attio_webhooks=debug",
        "attio_webhooks=trace",
    ] {
        let layer = format!("[log]\nlevel = {level:?}");
        assert!(
            Settings::from_toml_layers("test", &[SECRET_ONLY, &layer]).is_ok(),
            "{level}"
        );
    }
}

#[test]
fn app_env_takes_shipped_names_in_any_case_and_refuses_other_names_without_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let resolve = |name: &str| resolve_environment(Some(name.to_string()), dir.path());
    assert_eq!(resolve("Production").unwrap(), "production");
    assert_eq!(resolve("PRODUCTION").unwrap(), "production");
    assert_eq!(resolve("test").unwrap(), "test");
    assert_eq!(resolve("").unwrap(), "development");
    assert_eq!(
        resolve_environment(None, dir.path()).unwrap(),
        "development"
    );
    let error = resolve("prod").unwrap_err().to_string();
    assert!(
        error.contains("APP_ENV")
            && error.contains("\"prod\"")
            && error.contains("prod.toml")
            && error.contains("development, test, production"),
        "{error}"
    );
    std::fs::write(dir.path().join("staging.toml"), "").unwrap();
    assert_eq!(resolve("staging").unwrap(), "staging");
}

#[test]
fn the_production_guard_applies_whatever_the_case_of_production() {
    let toml = format!("[webhook]\nsecrets = [\"{DEVELOPMENT_SECRET}\"]");
    for environment in ["production", "Production", "PRODUCTION"] {
        let error = Settings::from_toml(environment, &toml).unwrap_err();
        assert!(
            matches!(error, ConfigError::DevelopmentSecretInProduction),
            "{environment}: {error}"
        );
    }
}

#[test]
fn enum_errors_list_the_valid_values_and_no_rust_type_names() {
    for (layer, key, valid) in [
        (
            "[storage]\nsync = \"fast\"",
            "storage.sync",
            &["\"full\"", "\"normal\""][..],
        ),
        (
            "[log]\nformat = \"jsn\"",
            "log.format",
            &["\"pretty\"", "\"json\""],
        ),
        (
            "[queue]\nbackend = \"rediss\"",
            "queue.backend",
            &["\"embedded\"", "\"redis\""],
        ),
        (
            "[storage]\nsync = 1",
            "storage.sync",
            &["\"full\"", "\"normal\""],
        ),
    ] {
        let error = refusal(layer);
        assert!(error.contains(key), "{layer}: {error}");
        for word in valid {
            assert!(error.contains(word), "{layer}: {error}");
        }
        for rust in ["enum", "variant", "SyncMode", "LogFormat", "QueueBackend"] {
            assert!(!error.contains(rust), "{layer}: {error}");
        }
    }
}

#[test]
fn numbers_in_rust_words_are_said_in_plain_words() {
    let error = refusal("[server]\nbody_limit = -1");
    assert!(
        error.contains("server.body_limit") && error.contains("the number -1"),
        "{error}"
    );
    assert!(!error.contains("64-bit"), "{error}");
    let error = refusal("[worker]\nmax_attempts = 5000000000");
    assert!(error.contains("from 0 to 4294967295"), "{error}");
    assert!(!error.contains("32 bit"), "{error}");
}

#[test]
fn a_bare_number_for_a_duration_is_refused_with_an_example() {
    let error = refusal("[worker]\nretry_max = 300");
    assert!(
        error.contains("worker.retry_max")
            && error.contains("the number 300")
            && error.contains("\"300s\""),
        "{error}"
    );
    let error = refusal(
        "[sinks.s]\nkind = \"stdout\"\nretry_max = 300\n\
         [[routes]]\nname = \"r\"\nevents = [\"*\"]\nsinks = [\"s\"]",
    );
    assert!(
        error.contains("sinks.s.retry_max") && error.contains("\"300s\""),
        "{error}"
    );
    let error = refusal("[dedupe]\ndone_ttl = \"four days\"");
    assert!(
        error.contains("dedupe.done_ttl") && error.contains("\"4d\""),
        "{error}"
    );
}

#[test]
fn cross_field_errors_show_every_value_involved() {
    let error = refusal("[dedupe]\nclaim_lease = \"10s\"");
    for part in [
        "`attio.retry_total` (30s)",
        "attio.request_timeout (15s)",
        "enrichment.coalesce_window (300ms)",
        "dedupe.claim_lease (10s)",
    ] {
        assert!(error.contains(part), "{part}: {error}");
    }
    let error = refusal("[worker]\nretry_initial = \"10m\"\nretry_max = \"1m\"");
    assert!(error.contains("10m") && error.contains("(1m)"), "{error}");
    let error = refusal("[dedupe]\nclaim_lease = \"2m\"\ndone_ttl = \"1m\"");
    assert!(error.contains("1m") && error.contains("(2m)"), "{error}");
}

#[test]
fn a_sink_that_no_route_names_is_reported_by_name() {
    let without_routes = Settings::from_toml(
        "test",
        &format!("{SECRET_ONLY}[sinks.audit]\nkind = \"stdout\""),
    )
    .unwrap();
    let warnings = without_routes.unused_sinks();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("\"audit\"") && warnings[0].contains("no [[routes]]"),
        "{warnings:?}"
    );
    let with_routes = Settings::from_toml(
        "test",
        &format!(
            "{SECRET_ONLY}[sinks.a]\nkind = \"stdout\"\n[sinks.b]\nkind = \"stdout\"\n\
             [[routes]]\nname = \"r\"\nevents = [\"*\"]\nsinks = [\"a\"]"
        ),
    )
    .unwrap();
    let warnings = with_routes.unused_sinks();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("\"b\""), "{warnings:?}");
    assert!(Settings::from_toml("test", SECRET_ONLY)
        .unwrap()
        .unused_sinks()
        .is_empty());
}

#[test]
fn redacted_urls_keep_the_shape_and_drop_user_info_and_query_values() {
    for (url, shown) in [
        (
            "http//user:pw@host/x?token=T",
            "http//redacted@host/x?token=redacted",
        ),
        (
            "https://user:pw@hooks.test:8443/in?token=T&team=sales#part",
            "https://redacted@hooks.test:8443/in?token=redacted&team=redacted#part",
        ),
        ("https://hooks.test/in", "https://hooks.test/in"),
        (
            "https://hooks.test/in?SECRET",
            "https://hooks.test/in?redacted",
        ),
        ("redis://:pa#ss@h:6379/0", "redis://redacted@h:6379/0"),
        ("user:pw@host", "redacted@host"),
        ("", ""),
    ] {
        assert_eq!(redacted_url(url), shown, "{url}");
    }
}

#[test]
fn a_mistyped_url_is_quoted_in_the_error_without_its_user_info_or_query_values() {
    for layer in [
        "[sinks.s]\nkind=\"http\"\nurl=\"http//user:pw-text@host/x?token=token-text\"\n\
         [[routes]]\nname=\"r\"\nevents=[\"*\"]\nsinks=[\"s\"]",
        "[attio]\nbase_url=\"ftp://user:pw-text@host/x?token=token-text\"",
    ] {
        let error = Settings::from_toml_layers("test", &[SECRET_ONLY, layer])
            .unwrap_err()
            .to_string();
        assert!(error.contains("redacted@host/x?token=redacted"), "{error}");
        assert!(
            !error.contains("pw-text") && !error.contains("token-text"),
            "{error}"
        );
    }
}

#[test]
fn secrets_are_trimmed_and_empty_ones_dropped() {
    let settings = Settings::from_toml(
        "test",
        "[webhook]\nsecrets=[\"old\", \" new \", \"\", \"  \"]",
    )
    .unwrap();
    let secrets: Vec<&str> = settings
        .webhook
        .secrets
        .iter()
        .map(|s| s.expose_secret())
        .collect();
    assert_eq!(secrets, ["old", "new"]);
}

#[test]
fn redaction_skips_escaped_quotes_and_keeps_the_rest() {
    assert_eq!(
        redact_quoted_values(r#"invalid type: string "a\"b", expected an integer for key `x`"#),
        "invalid type: a string, expected an integer for key `x`"
    );
}

#[test]
fn the_configuration_carries_the_listeners_the_redis_queue_the_routes_and_the_sinks_parsed() {
    let config = Config::from_toml(
        "test",
        r#"
[webhook]
secrets = ["s"]
[server]
listen = "127.0.0.1:9000"
[admin]
listen = "127.0.0.1:9001"
[queue]
backend = "redis"
[redis]
url = "redis://127.0.0.1:6379/2"
key_prefix = "crm"
[sinks.stream]
kind = "redis_stream"
key = "events"
[[routes]]
name = "launches"
events = ["spaceship.launched"]
sinks = ["stream"]
enrich = false
"#,
    )
    .unwrap();
    assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 9000)));
    assert_eq!(
        config.admin_listen,
        Some(SocketAddr::from(([127, 0, 0, 1], 9001)))
    );
    let Queue::Redis(redis) = &config.queue else {
        panic!(
            "queue.backend = \"redis\" gives the Redis queue: {:?}",
            config.queue
        );
    };
    assert_eq!(redis.key_prefix, "crm");
    assert_eq!(
        config.queue.redis().map(|r| r.key_prefix.as_str()),
        Some("crm")
    );
    assert_eq!(
        config.routes.unknown_event_types(),
        vec![("launches".to_string(), "spaceship.launched".to_string())],
        "the routes are compiled"
    );
    let SinkKind::RedisStream(stream) = &config.sinks["stream"].kind else {
        panic!("the stream sink: {:?}", config.sinks);
    };
    assert!(
        stream.url.is_some(),
        "a stream without its own url inherits redis.url"
    );
}

#[test]
fn the_embedded_queue_names_its_journal_and_shares_dedupe_through_redis_when_it_is_set() {
    let config = Config::from_toml(
        "test",
        "[webhook]\nsecrets = [\"s\"]\n[storage]\npath = \"/var/lib/attio\"\nsync = \"normal\"\n",
    )
    .unwrap();
    let Queue::Embedded {
        journal,
        sync,
        redis,
    } = &config.queue
    else {
        panic!("the embedded queue by default: {:?}", config.queue);
    };
    assert_eq!(journal, &PathBuf::from("/var/lib/attio/journal.sqlite3"));
    assert_eq!(*sync, SyncMode::Normal);
    assert!(redis.is_none());
    assert!(config.admin_listen.is_none());
    assert!(
        config.sinks.contains_key("stdout"),
        "no routes: the stdout sink"
    );

    let with_redis = Config::from_toml(
        "test",
        "[webhook]\nsecrets = [\"s\"]\n[redis]\nurl = \"redis://127.0.0.1:6379\"\n",
    )
    .unwrap();
    assert!(matches!(
        &with_redis.queue,
        Queue::Embedded { redis: Some(_), .. }
    ));
}

#[test]
fn serve_listen_replaces_the_parsed_address_and_names_the_key_when_it_is_bad() {
    let mut config = Config::from_toml("test", "[webhook]\nsecrets = [\"s\"]").unwrap();
    config.listen_on("127.0.0.1:7000".to_string()).unwrap();
    assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 7000)));
    assert_eq!(config.settings.server.listen, "127.0.0.1:7000");
    let error = config.listen_on("localhost".to_string()).unwrap_err();
    assert!(error.to_string().contains("`server.listen`"), "{error}");
}
