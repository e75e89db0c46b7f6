//! Typed models of what the daemon reads from and sends to Attio's REST API (docs/attio.md §4, §5).
//!
//! In: the `data` member of Attio's answers. Out: structs whose known fields are typed and whose
//! other fields are kept in `extra`, so that re-serialising a model gives back everything Attio
//! sent (the sink line's `data`). Unknown fields are tolerated everywhere; attribute values stay
//! JSON (`serde_json::Value`). The webhook secret is a `SecretString` and never printed.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Every success is `{"data": ...}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub(crate) struct Envelope<T> {
    pub(crate) data: T,
}

/// Attio's error body. Every field is optional: a proxy in between may answer anything.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    pub(crate) code: Option<String>,
    pub(crate) message: Option<String>,
}

/// Keys not modelled explicitly, kept so nothing Attio sent is lost.
pub(crate) type Extra = Map<String, Value>;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct RecordId {
    pub(crate) workspace_id: String,
    pub object_id: String,
    pub record_id: String,
}

/// `GET /v2/objects/{object}/records/{record_id}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Record {
    pub id: RecordId,
    #[serde(default)]
    pub(crate) created_at: Option<String>,
    #[serde(default)]
    pub(crate) web_url: Option<String>,
    /// Attribute slug → list of values, as Attio sent them.
    #[serde(default)]
    pub values: Map<String, Value>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub(crate) struct EntryId {
    pub(crate) workspace_id: String,
    pub(crate) list_id: String,
    pub(crate) entry_id: String,
}

/// `GET /v2/lists/{list}/entries/{entry_id}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ListEntry {
    pub(crate) id: EntryId,
    #[serde(default)]
    pub(crate) parent_record_id: Option<String>,
    /// The parent object's slug.
    #[serde(default)]
    pub(crate) parent_object: Option<String>,
    #[serde(default)]
    pub(crate) created_at: Option<String>,
    #[serde(default)]
    pub(crate) entry_values: Map<String, Value>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub(crate) struct NoteId {
    pub(crate) workspace_id: String,
    pub(crate) note_id: String,
}

/// `GET /v2/notes/{note_id}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Note {
    pub(crate) id: NoteId,
    #[serde(default)]
    pub(crate) parent_object: Option<String>,
    #[serde(default)]
    pub(crate) parent_record_id: Option<String>,
    #[serde(default)]
    pub(crate) title: Option<String>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub(crate) struct TaskId {
    pub(crate) workspace_id: String,
    pub(crate) task_id: String,
}

/// `GET /v2/tasks/{task_id}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Task {
    pub(crate) id: TaskId,
    #[serde(default)]
    pub(crate) content_plaintext: Option<String>,
    #[serde(default)]
    pub(crate) is_completed: Option<bool>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub(crate) struct CommentId {
    pub(crate) workspace_id: String,
    pub(crate) comment_id: String,
}

/// `GET /v2/comments/{comment_id}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Comment {
    pub(crate) id: CommentId,
    #[serde(default)]
    pub(crate) thread_id: Option<String>,
    #[serde(default)]
    pub(crate) content_plaintext: Option<String>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub(crate) struct ListId {
    pub(crate) workspace_id: String,
    pub(crate) list_id: String,
}

/// `GET /v2/lists/{list}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct List {
    pub(crate) id: ListId,
    #[serde(default)]
    pub(crate) api_slug: Option<String>,
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub(crate) struct ObjectId {
    pub(crate) workspace_id: String,
    pub(crate) object_id: String,
}

/// `GET /v2/objects/{object}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Object {
    pub(crate) id: ObjectId,
    /// Nullable in Attio's schema.
    #[serde(default)]
    pub api_slug: Option<String>,
    #[serde(default)]
    pub(crate) singular_noun: Option<String>,
    #[serde(default)]
    pub(crate) plural_noun: Option<String>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

/// An attribute's id. `object_id` names the object or list it belongs to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub(crate) struct AttributeId {
    pub(crate) workspace_id: String,
    #[serde(default)]
    pub(crate) object_id: Option<String>,
    pub(crate) attribute_id: String,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

/// `GET /v2/{objects|lists}/{id}/attributes/{attribute}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Attribute {
    pub(crate) id: AttributeId,
    #[serde(default)]
    pub(crate) title: Option<String>,
    #[serde(default)]
    pub api_slug: Option<String>,
    #[serde(default, rename = "type")]
    pub(crate) kind: Option<String>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub(crate) struct WorkspaceMemberId {
    pub(crate) workspace_id: String,
    pub(crate) workspace_member_id: String,
}

/// `GET /v2/workspace_members/{workspace_member_id}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct WorkspaceMember {
    pub(crate) id: WorkspaceMemberId,
    #[serde(default)]
    pub(crate) first_name: Option<String>,
    #[serde(default)]
    pub(crate) last_name: Option<String>,
    #[serde(default)]
    pub(crate) email_address: Option<String>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub(crate) struct CallRecordingId {
    pub(crate) workspace_id: String,
    pub(crate) meeting_id: String,
    pub(crate) call_recording_id: String,
}

/// `GET /v2/meetings/{meeting_id}/call_recordings/{call_recording_id}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct CallRecording {
    pub(crate) id: CallRecordingId,
    #[serde(default)]
    pub(crate) status: Option<String>,
    #[serde(default)]
    pub(crate) web_url: Option<String>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

/// `GET /v2/self`: whether a token works, and for which workspace.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct TokenInfo {
    pub active: bool,
    #[serde(default)]
    pub(crate) workspace_id: Option<String>,
    #[serde(default)]
    pub(crate) workspace_name: Option<String>,
    #[serde(default)]
    pub(crate) scope: Option<String>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

/// A webhook filter condition's operator (docs/attio.md §4: no others exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterOperator {
    Equals,
    NotEquals,
}

/// `{"field": "id.object_id", "operator": "equals", "value": "<uuid>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct FilterCondition {
    pub field: String,
    pub operator: FilterOperator,
    pub value: String,
}

/// A subscription filter: all conditions, or any. `None` beside it means "every event".
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub enum WebhookFilter {
    #[serde(rename = "$and")]
    All(Vec<FilterCondition>),
    #[serde(rename = "$or")]
    Any(Vec<FilterCondition>),
}

/// One subscription. `filter` is always serialised, as `null` when absent (docs/attio.md §4).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Subscription {
    pub event_type: String,
    #[serde(default)]
    pub filter: Option<WebhookFilter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct WebhookId {
    pub(crate) workspace_id: String,
    pub webhook_id: String,
}

/// A webhook as `GET /v2/webhooks` lists it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Webhook {
    pub id: WebhookId,
    pub target_url: String,
    pub(crate) subscriptions: Vec<Subscription>,
    /// `active`, `degraded` or `inactive`.
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) created_at: Option<String>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

/// The answer to `POST /v2/webhooks`: the webhook and its signing secret, shown only this once.
#[derive(Debug, Clone, Deserialize)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: Webhook,
    pub secret: SecretString,
}

/// Body of `POST /v2/webhooks` (inside `{"data": ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewWebhook {
    pub target_url: String,
    pub subscriptions: Vec<Subscription>,
}

/// Body of `PATCH /v2/webhooks/{id}`: each given field replaces the old one whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WebhookUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriptions: Option<Vec<Subscription>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn subscriptions_send_a_null_filter_explicitly() {
        let body = NewWebhook {
            target_url: "https://example.com/hook".into(),
            subscriptions: vec![Subscription {
                event_type: "record.updated".into(),
                filter: None,
            }],
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"target_url":"https://example.com/hook","subscriptions":[{"event_type":"record.updated","filter":null}]}"#
        );
    }

    #[test]
    fn filters_serialise_as_attio_expects() {
        let filter = WebhookFilter::All(vec![FilterCondition {
            field: "id.object_id".into(),
            operator: FilterOperator::NotEquals,
            value: "97052eb9-e65e-443f-a297-f2d9a4a7f795".into(),
        }]);
        assert_eq!(
            serde_json::to_value(&filter).unwrap(),
            serde_json::json!({"$and": [{"field": "id.object_id", "operator": "not_equals", "value": "97052eb9-e65e-443f-a297-f2d9a4a7f795"}]})
        );
    }

    #[test]
    fn created_webhook_sample_parses_and_hides_its_secret() {
        let text = include_str!("../../tests/fixtures/attio_docs__POST_v2_webhooks_response.json");
        let created: Envelope<CreatedWebhook> = serde_json::from_str(text).unwrap();
        assert_eq!(created.data.webhook.status, "active");
        assert!(matches!(
            created.data.webhook.subscriptions[0].filter,
            Some(WebhookFilter::All(_))
        ));
        assert!(created.data.secret.expose_secret().starts_with("ca978112"));
        assert!(!format!("{created:?}").contains("ca978112"));
    }

    #[test]
    fn models_keep_unknown_fields_through_a_round_trip() {
        let text =
            include_str!("../../tests/fixtures/attio_docs__GET_list_entry_response_excerpt.json");
        let original: Value = serde_json::from_str(text).unwrap();
        let entry: Envelope<ListEntry> = serde_json::from_str(text).unwrap();
        assert_eq!(entry.data.parent_object.as_deref(), Some("people"));
        assert_eq!(serde_json::to_value(&entry).unwrap(), original);

        let text = include_str!("../../tests/fixtures/attio_docs__GET_comment_response.json");
        let original: Value = serde_json::from_str(text).unwrap();
        let comment: Envelope<Comment> = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_value(&comment).unwrap(), original);
    }
}
