# Shared by bench/run.sh and bench/ab.sh (sourced, not run).

# write_config DIR [EXTRA]: the daemon's benchmark settings in DIR/config.toml: the journal in
# DIR/data, log level warn, every event to the jsonl sink DIR/events.jsonl; EXTRA is appended.
write_config() {
  cat > "$1/config.toml" <<TOML
[storage]
path = "$1/data"
[log]
level = "warn"
[sinks.file]
kind = "jsonl"
path = "$1/events.jsonl"
[[routes]]
name = "all"
events = ["*"]
sinks = ["file"]
${2:-}
TOML
}
