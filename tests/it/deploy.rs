//! The files around the binary: every YAML file under deploy/ parses, and the compose file, the
//! Kubernetes manifests, the Caddyfile and the repository's Dockerfile agree with each other and
//! with the daemon (probe paths, ports, image, user and group, replicas, the variables the daemon
//! needs, config that the daemon accepts); `.env.example` lists every variable the daemon reads
//! and the docs name; `.dockerignore` keeps local `.env` files out of the image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use attio_webhooks::config::{QueueBackend, Settings};
use serde::Deserialize;
use serde_yaml_ng::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Every YAML document under deploy/, by file.
fn yaml_documents() -> BTreeMap<PathBuf, Vec<Value>> {
    let mut files = Vec::new();
    files_under(&deploy_dir(), &mut files);
    let mut documents = BTreeMap::new();
    for path in files {
        let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if !is_yaml {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut docs = Vec::new();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
            if !value.is_null() {
                docs.push(value);
            }
        }
        assert!(!docs.is_empty(), "{} holds no document", path.display());
        documents.insert(path, docs);
    }
    documents
}

/// Kubernetes objects (documents with apiVersion and kind), by kind.
fn kubernetes_objects() -> BTreeMap<String, Vec<Value>> {
    let mut objects: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for document in yaml_documents().into_values().flatten() {
        if let (Some(_), Some(kind)) = (document["apiVersion"].as_str(), document["kind"].as_str())
        {
            objects.entry(kind.to_string()).or_default().push(document);
        }
    }
    objects
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} should be a string, got {value:?}"))
}

fn seq<'a>(value: &'a Value, what: &str) -> &'a Vec<Value> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{what} should be a list, got {value:?}"))
}

/// The port the image (the repository's Dockerfile) exposes: the one every other file must use.
fn exposed_port() -> u64 {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .and_then(|p| p.trim().parse().ok())
        .expect("the Dockerfile exposes one port")
}

/// The port of a `--listen ADDR` argument.
fn listen_port(args: &[String]) -> u64 {
    let at = args
        .iter()
        .position(|a| a == "--listen")
        .expect("--listen is passed");
    args[at + 1]
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("--listen names a port")
}

fn strings(value: &Value) -> Vec<String> {
    seq(value, "args")
        .iter()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => serde_yaml_ng::to_string(other).unwrap().trim().to_string(),
        })
        .collect()
}

/// The daemon accepts a deployment's config file (with the secrets the environment supplies).
fn assert_daemon_accepts(config: &str, origin: &str) {
    let secrets = "[webhook]\nsecrets = [\"s\"]\n[redis]\nurl = \"redis://redis:6379\"\n\
                   [admin]\ntoken = \"t\"\n";
    let settings = Settings::from_toml_layers("production", &[config, secrets])
        .unwrap_or_else(|e| panic!("{origin}: the daemon refuses this config: {e}"));
    assert_eq!(
        settings.queue.backend,
        QueueBackend::Redis,
        "{origin}: replicas need the Redis queue"
    );
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let documents = yaml_documents();
    assert!(
        documents.len() >= 6,
        "compose file and Kubernetes manifests: {:?}",
        documents.keys().collect::<Vec<_>>()
    );
}

#[test]
fn the_kubernetes_deployment_probes_health_and_readiness_with_limits_and_replicas() {
    let objects = kubernetes_objects();
    let deployments = &objects["Deployment"];
    assert_eq!(deployments.len(), 1);
    let deployment = &deployments[0];
    assert!(
        deployment["spec"]["replicas"].as_u64().unwrap() >= 2,
        "at least two replicas"
    );
    let pod = &deployment["spec"]["template"];
    let selector = deployment["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap();
    for (key, value) in selector {
        assert_eq!(
            &pod["metadata"]["labels"][str_of(key, "label")],
            value,
            "the selector matches the pod labels"
        );
    }
    let containers = seq(&pod["spec"]["containers"], "containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];

    let port = exposed_port();
    let ports = seq(&container["ports"], "ports");
    assert_eq!(ports[0]["containerPort"].as_u64(), Some(port));
    let port_name = str_of(&ports[0]["name"], "port name");
    assert_eq!(listen_port(&strings(&container["args"])), port);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        let probe_port = &get["port"];
        assert!(
            probe_port.as_str() == Some(port_name) || probe_port.as_u64() == Some(port),
            "{probe} uses the container port"
        );
    }
    let limits = &container["resources"]["limits"];
    assert!(limits["cpu"].as_str().is_some() || limits["cpu"].as_u64().is_some());
    assert!(limits["memory"].as_str().is_some(), "memory limit");
    assert!(container["resources"]["requests"]["memory"]
        .as_str()
        .is_some());
    assert!(
        str_of(&container["image"], "image").starts_with("attio-webhooks"),
        "the image the Dockerfile builds"
    );

    // Secrets come from the Secret, never inline.
    let secret = &objects["Secret"][0];
    let secret_name = str_of(&secret["metadata"]["name"], "secret name");
    let env = seq(&container["env"], "env");
    for variable in ["ATTIO_WEBHOOK_SECRET", "ATTIO_API_KEY", "REDIS_URL"] {
        let entry = env
            .iter()
            .find(|e| e["name"].as_str() == Some(variable))
            .unwrap_or_else(|| panic!("{variable} is set"));
        assert!(entry["value"].is_null(), "{variable} is not inline");
        let reference = &entry["valueFrom"]["secretKeyRef"];
        assert_eq!(reference["name"].as_str(), Some(secret_name));
        let key = str_of(&reference["key"], "secret key");
        assert!(
            !secret["stringData"][key].is_null(),
            "the example Secret has {key}"
        );
    }

    // The config file comes from the ConfigMap, and the daemon accepts it.
    let config_map = &objects["ConfigMap"][0];
    let volumes = seq(&pod["spec"]["volumes"], "volumes");
    let config_volume = volumes
        .iter()
        .find(|v| !v["configMap"].is_null())
        .expect("a ConfigMap volume");
    assert_eq!(
        config_volume["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    let config_path = {
        let args = strings(&container["args"]);
        let at = args.iter().position(|a| a == "--config").unwrap();
        args[at + 1].clone()
    };
    let mount = seq(&container["volumeMounts"], "volumeMounts")
        .iter()
        .find(|m| m["name"] == config_volume["name"])
        .expect("the config volume is mounted");
    assert_eq!(mount["mountPath"].as_str(), Some(config_path.as_str()));
    let file = str_of(&mount["subPath"], "subPath");
    assert_daemon_accepts(
        str_of(&config_map["data"][file], "config file"),
        "ConfigMap",
    );
}

#[test]
fn the_service_pdb_and_ingress_point_at_the_deployment() {
    let objects = kubernetes_objects();
    let deployment = &objects["Deployment"][0];
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let port_name = str_of(&container["ports"][0]["name"], "port name");

    let service = &objects["Service"][0];
    for (key, value) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(&pod_labels[str_of(key, "label")], value);
    }
    let service_port = &service["spec"]["ports"][0];
    let target = &service_port["targetPort"];
    assert!(target.as_str() == Some(port_name) || target.as_u64() == Some(exposed_port()));

    let budget = &objects["PodDisruptionBudget"][0];
    for (key, value) in budget["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(&pod_labels[str_of(key, "label")], value);
    }
    let min_available = budget["spec"]["minAvailable"].as_u64().unwrap();
    assert!(
        min_available >= 1 && min_available < deployment["spec"]["replicas"].as_u64().unwrap(),
        "a drain can proceed and one replica stays"
    );

    let ingress = &objects["Ingress"][0];
    assert!(!ingress["spec"]["tls"].is_null(), "TLS at the ingress");
    let backend = &ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"];
    assert_eq!(backend["name"], service["metadata"]["name"]);
    assert_eq!(backend["port"]["name"], service_port["name"]);

    // Everything the kustomization lists exists.
    let kustomization = &objects["Kustomization"][0];
    for resource in seq(&kustomization["resources"], "resources") {
        let path = deploy_dir()
            .join("kubernetes")
            .join(str_of(resource, "resource"));
        assert!(path.is_file(), "{} exists", path.display());
    }
}

#[test]
fn the_compose_file_runs_two_replicas_on_redis_with_aof_behind_a_tls_proxy() {
    let compose_path = deploy_dir().join("compose/compose.yaml");
    let documents = yaml_documents();
    let compose = &documents[&compose_path][0];
    let services = compose["services"].as_mapping().unwrap();
    let port = exposed_port();

    let replicas: Vec<(&str, &Value)> = services
        .iter()
        .filter(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("attio-webhooks"))
        })
        .map(|(name, s)| (str_of(name, "service name"), s))
        .collect();
    assert!(replicas.len() >= 2, "two replicas");
    let caddyfile = std::fs::read_to_string(deploy_dir().join("compose/Caddyfile")).unwrap();
    for (name, service) in &replicas {
        assert_eq!(listen_port(&strings(&service["command"])), port, "{name}");
        let health = strings(&service["healthcheck"]["test"]).join(" ");
        assert!(
            health.contains(&format!(":{port}/healthz")) || health.contains("/readyz"),
            "{name}: {health}"
        );
        assert!(
            caddyfile.contains(&format!("{name}:{port}")),
            "the proxy sends to {name}:{port}"
        );
        let environment = &service["environment"];
        for variable in ["ATTIO_WEBHOOK_SECRET", "ATTIO_API_KEY"] {
            assert!(
                environment[variable]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&format!("${{{variable}"))),
                "{name}: {variable} comes from deploy/compose/.env"
            );
        }
        assert!(environment["REDIS_URL"]
            .as_str()
            .is_some_and(|u| u.starts_with("redis://redis:")));
        // The mounted config file exists and the daemon accepts it.
        let config = strings(&service["command"]);
        let config_path = &config[config.iter().position(|a| a == "--config").unwrap() + 1];
        let mount = strings(&service["volumes"])
            .into_iter()
            .find(|v| v.contains(config_path.as_str()))
            .expect("the config file is mounted");
        let local = compose_path
            .parent()
            .unwrap()
            .join(mount.split(':').next().unwrap());
        assert_daemon_accepts(&std::fs::read_to_string(&local).unwrap(), "compose");
    }
    assert!(caddyfile.contains("health_uri /readyz"));

    let redis = strings(&services[&Value::from("redis")]["command"]).join(" ");
    assert!(redis.contains("--appendonly yes"), "AOF on: {redis}");
    assert!(redis.contains("--appendfsync"), "{redis}");

    let proxy = &services[&Value::from("caddy")];
    let published = strings(&proxy["ports"]).join(" ");
    assert!(published.contains(":443"), "the proxy publishes HTTPS");
    assert!(strings(&proxy["volumes"])
        .iter()
        .any(|v| v.starts_with("./Caddyfile:")));
}

#[test]
fn the_compose_env_example_lists_every_variable_compose_yaml_asks_for() {
    let compose = std::fs::read_to_string(deploy_dir().join("compose/compose.yaml")).unwrap();
    let example = std::fs::read_to_string(deploy_dir().join("compose/.env.example")).unwrap();
    let mut asked = Vec::new();
    for (at, _) in compose.match_indices("${") {
        let name: String = compose[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        asked.push(name);
    }
    assert!(
        asked.iter().any(|name| name == "ATTIO_API_KEY"),
        "{asked:?}"
    );
    for name in asked {
        assert!(
            example.lines().any(|l| l.starts_with(&format!("{name}="))),
            "deploy/compose/.env.example lacks {name}"
        );
    }
}

fn repository_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The value after `flag` in `text` (`--uid 10001`).
fn number_after(text: &str, flag: &str) -> Option<u64> {
    let at = text.find(flag)? + flag.len();
    text[at..].split_whitespace().next()?.parse().ok()
}

#[test]
fn the_image_runs_as_the_user_and_group_the_kubernetes_manifests_name() {
    let dockerfile = repository_file("Dockerfile");
    let uid = number_after(&dockerfile, "--uid ").expect("the Dockerfile creates a user");
    let gid = number_after(&dockerfile, "--gid ").expect("the Dockerfile creates a group");
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the image does not run as root")
        .trim();
    assert_eq!(user, format!("{uid}:{gid}"), "numeric, for runAsNonRoot");
    let objects = kubernetes_objects();
    let security = &objects["Deployment"][0]["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(security["runAsUser"].as_u64(), Some(uid));
    assert_eq!(security["runAsGroup"].as_u64(), Some(gid));
    assert_eq!(security["fsGroup"].as_u64(), Some(gid));
}

#[test]
fn dockerignore_keeps_local_env_files_out_of_the_build_context() {
    let patterns: Vec<String> = repository_file(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    // `.env` alone would match only the top directory; `**/` matches at any depth.
    for needed in ["**/.env", "**/.env.*"] {
        assert!(
            patterns.iter().any(|p| p == needed),
            ".dockerignore lacks {needed}: {patterns:?}"
        );
    }
    assert!(
        !patterns
            .iter()
            .any(|p| p.starts_with("!") && p.contains(".env")),
        "no exception brings an env file back: {patterns:?}"
    );
}

/// The variable that sets each key of the settings (`storage.sync` ->
/// `ATTIO_WEBHOOKS__STORAGE__SYNC`), or the well-known one that does.
fn variable_of(key: &str) -> String {
    match key {
        "webhook.secrets" => "ATTIO_WEBHOOK_SECRET".to_string(),
        "attio.api_key" => "ATTIO_API_KEY".to_string(),
        "redis.url" => "REDIS_URL".to_string(),
        "admin.token" => "ATTIO_WEBHOOKS_ADMIN_TOKEN".to_string(),
        _ => format!(
            "ATTIO_WEBHOOKS__{}",
            key.replace('.', "__").to_ascii_uppercase()
        ),
    }
}

/// Every `section.key` of the settings, from the settings themselves (sinks and routes are
/// tables of the user's own, shown by example).
fn settings_keys() -> Vec<String> {
    let settings = Settings::from_toml("test", "[webhook]\nsecrets = [\"s\"]").unwrap();
    let value = serde_json::to_value(&settings).unwrap();
    let mut keys = Vec::new();
    for (section, table) in value.as_object().unwrap() {
        if section == "sinks" || section == "routes" {
            continue;
        }
        for key in table.as_object().unwrap().keys() {
            keys.push(format!("{section}.{key}"));
        }
    }
    keys
}

/// Environment variable names that a text mentions: the daemon's own prefix and the others it
/// reads.
fn variables_named_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let starts_word =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        if starts_word && bytes[at].is_ascii_uppercase() {
            let end = text[at..]
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .map_or(text.len(), |length| at + length);
            names.push(text[at..end].to_string());
            at = end;
        } else {
            at += 1;
        }
    }
    names
        .into_iter()
        .filter(|name| {
            name.starts_with("ATTIO_WEBHOOKS__")
                || [
                    "APP_ENV",
                    "APP_CONFIG_DIR",
                    "ATTIO_WEBHOOKS_CONFIG",
                    "ATTIO_WEBHOOK_SECRET",
                    "ATTIO_API_KEY",
                    "REDIS_URL",
                    "RUST_LOG",
                    "NO_COLOR",
                    "DATABASE_URL",
                    "PGPASSWORD",
                ]
                .contains(&name.as_str())
        })
        // Placeholders and per-sink examples stand for many variables.
        .filter(|name| {
            !name.starts_with("ATTIO_WEBHOOKS__SECTION")
                && !name.starts_with("ATTIO_WEBHOOKS__SINKS__")
                && name != "ATTIO_WEBHOOKS__"
        })
        .collect()
}

#[test]
fn env_example_lists_every_variable_the_settings_and_the_docs_name() {
    let example = repository_file(".env.example");
    // Set (`NAME=...`) or shown commented out (`# NAME=...`).
    let listed = |name: &str| {
        example.lines().any(|line| {
            line.trim_start_matches('#')
                .trim_start()
                .starts_with(&format!("{name}="))
        })
    };
    let mut missing = Vec::new();
    for key in settings_keys() {
        let variable = variable_of(&key);
        if !listed(&variable) {
            missing.push(format!("{variable} (the setting {key})"));
        }
    }
    let mut documents = vec!["README.md".to_string(), "config/default.toml".to_string()];
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            documents.push(format!(
                "docs/{}",
                path.file_name().unwrap().to_str().unwrap()
            ));
        }
    }
    for document in documents {
        for variable in variables_named_in(&repository_file(&document)) {
            if !listed(&variable) {
                missing.push(format!("{variable} (named in {document})"));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(missing.is_empty(), ".env.example lacks {missing:#?}");
}

/// With `APP_ENV=production`, `/metrics` is served only on `admin.listen`: every shipped
/// deployment sets it, declares its port and (Kubernetes) tells Prometheus to scrape it there.
#[test]
fn the_shipped_deployments_serve_metrics_on_an_admin_port_of_their_own() {
    let admin_port = |listen: &str| -> u64 {
        listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("admin.listen {listen:?} names a port"))
    };

    let dockerfile = repository_file("Dockerfile");
    let listen = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("ATTIO_WEBHOOKS__ADMIN__LISTEN="))
        .expect("the image sets ATTIO_WEBHOOKS__ADMIN__LISTEN");
    let port = admin_port(listen.trim_end_matches('\\').trim());
    assert!(
        dockerfile
            .lines()
            .any(|l| l.strip_prefix("EXPOSE ").map(str::trim) == Some(&port.to_string())),
        "the image exposes the admin port {port}"
    );

    let objects = kubernetes_objects();
    let pod = &objects["Deployment"][0]["spec"]["template"];
    let container = &seq(&pod["spec"]["containers"], "containers")[0];
    let env = seq(&container["env"], "env");
    let listen = env
        .iter()
        .find(|e| e["name"].as_str() == Some("ATTIO_WEBHOOKS__ADMIN__LISTEN"))
        .and_then(|e| e["value"].as_str())
        .expect("the deployment sets ATTIO_WEBHOOKS__ADMIN__LISTEN");
    let port = admin_port(listen);
    assert!(
        seq(&container["ports"], "ports")
            .iter()
            .any(|p| p["containerPort"].as_u64() == Some(port)),
        "the container declares the admin port {port}"
    );
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));

    let compose_path = deploy_dir().join("compose/compose.yaml");
    let documents = yaml_documents();
    let services = documents[&compose_path][0]["services"]
        .as_mapping()
        .unwrap();
    for (name, service) in services {
        let is_daemon = service["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("attio-webhooks"));
        if !is_daemon {
            continue;
        }
        let listen = service["environment"]["ATTIO_WEBHOOKS__ADMIN__LISTEN"]
            .as_str()
            .unwrap_or_else(|| panic!("{name:?} sets ATTIO_WEBHOOKS__ADMIN__LISTEN"));
        let port = admin_port(listen);
        assert!(
            strings(&service["expose"]).contains(&port.to_string()),
            "{name:?} exposes the admin port {port}"
        );
    }
}
