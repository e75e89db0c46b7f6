//! The typed views: one per object and list, one column per attribute in its natural SQL type.
//!
//! In: an object's or list's slug and its attributes (slug, Attio type, multiselect). Out: the
//! `CREATE VIEW` statement over `records` or `list_entries`. Pure text: [`super::store`] runs it.
//! The mapping of every Attio attribute type is in `docs/postgres.md`; keep the two together.

/// What a view is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parent {
    Object,
    List,
}

impl Parent {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Parent::Object => "object",
            Parent::List => "list",
        }
    }
}

/// One attribute as the catalog holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttributeColumn {
    pub(crate) slug: String,
    /// Attio's attribute type (`text`, `status`, `record-reference`, ...).
    pub(crate) kind: String,
    pub(crate) multiselect: bool,
}

/// The SQL type a view column has, and where in one Attio value its scalar sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mapping {
    /// Path inside one value object, `None` for the whole value (jsonb).
    pub(crate) path: Option<&'static [&'static str]>,
    pub(crate) single: &'static str,
    /// The type of a multiselect attribute's column.
    pub(crate) multiple: &'static str,
}

/// Attio attribute type → view column. Unknown types stay jsonb, so a new Attio type never
/// breaks a view.
pub(crate) fn mapping(kind: &str) -> Mapping {
    let scalar =
        |path: &'static [&'static str], single: &'static str, multiple: &'static str| Mapping {
            path: Some(path),
            single,
            multiple,
        };
    match kind {
        "text" => scalar(&["value"], "text", "text[]"),
        "number" => scalar(&["value"], "numeric", "jsonb"),
        "checkbox" => scalar(&["value"], "boolean", "jsonb"),
        "currency" => scalar(&["currency_value"], "numeric", "jsonb"),
        "date" => scalar(&["value"], "date", "jsonb"),
        "timestamp" => scalar(&["value"], "timestamptz", "jsonb"),
        "rating" => scalar(&["value"], "numeric", "jsonb"),
        "status" => scalar(&["status", "title"], "text", "text[]"),
        "select" => scalar(&["option", "title"], "text", "text[]"),
        "record-reference" => scalar(&["target_record_id"], "uuid", "uuid[]"),
        "actor-reference" => scalar(&["referenced_actor_id"], "uuid", "uuid[]"),
        "domain" => scalar(&["domain"], "text", "text[]"),
        "email-address" => scalar(&["email_address"], "text", "text[]"),
        "phone-number" => scalar(&["phone_number"], "text", "text[]"),
        "personal-name" => scalar(&["full_name"], "text", "text[]"),
        "interaction" => scalar(&["interacted_at"], "timestamptz", "jsonb"),
        // "location" and anything Attio adds later.
        _ => Mapping {
            path: None,
            single: "jsonb",
            multiple: "jsonb",
        },
    }
}

/// `"name"` with inner quotes doubled.
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled.
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The expression of one attribute's column, reading the jsonb column `source` of alias `r`.
pub(crate) fn column_expression(source: &str, attribute: &AttributeColumn) -> String {
    let map = mapping(&attribute.kind);
    let values = format!(
        "r.{}->{}",
        quote_identifier(source),
        quote_literal(&attribute.slug)
    );
    let path = |path: &[String]| quote_literal(&format!("{{{}}}", path.join(",")));
    match (map.path, attribute.multiselect) {
        (Some(p), false) => {
            let text = format!("({values} #>> {})", path(&with_first(p)));
            match map.single {
                "text" => text,
                sql => format!("{text}::{sql}"),
            }
        }
        (Some(p), true) if map.multiple != "jsonb" => {
            let parts: Vec<String> = p.iter().map(|s| s.to_string()).collect();
            let element = format!("(value #>> {})", path(&parts));
            let element = match map.multiple {
                "text[]" => element,
                sql => format!("{element}::{}", sql.trim_end_matches("[]")),
            };
            format!(
                "ARRAY(SELECT {element} FROM jsonb_array_elements(CASE jsonb_typeof({values}) \
                 WHEN 'array' THEN {values} ELSE '[]'::jsonb END))"
            )
        }
        (None, false) => format!("({values} -> 0)"),
        (_, _) => values,
    }
}

fn with_first(path: &[&str]) -> Vec<String> {
    std::iter::once("0".to_string())
        .chain(path.iter().map(|p| p.to_string()))
        .collect()
}

/// `CREATE VIEW name AS SELECT ...` for an object (over `records`) or a list (over
/// `list_entries`). Deleted rows are left out. An attribute whose slug equals a leading column
/// (`record_id`, `entry_id`, `parent_record_id`) is left out too: the leading column says it.
pub(crate) fn view_definition(
    name: &str,
    parent: Parent,
    parent_id: &str,
    attributes: &[AttributeColumn],
) -> String {
    let (leading, source, table, key): (&[&str], &str, &str, &str) = match parent {
        Parent::Object => (&["record_id"], "values", "records", "object_id"),
        Parent::List => (
            &["entry_id", "parent_record_id", "parent_object"],
            "entry_values",
            "list_entries",
            "list_id",
        ),
    };
    let mut columns: Vec<String> = leading.iter().map(|c| format!("r.{c}")).collect();
    for attribute in attributes {
        if leading.contains(&attribute.slug.as_str()) {
            continue;
        }
        columns.push(format!(
            "{} AS {}",
            column_expression(source, attribute),
            quote_identifier(&attribute.slug)
        ));
    }
    format!(
        "CREATE VIEW {} AS SELECT {} FROM {table} r WHERE r.{key} = {}::uuid AND r.deleted_at IS NULL",
        quote_identifier(name),
        columns.join(", "),
        quote_literal(parent_id)
    )
}

/// Tables of the mirror: a view may not take their names.
pub(crate) const RESERVED: &[&str] = &[
    "records",
    "list_entries",
    "notes",
    "tasks",
    "comments",
    "workspace_members",
    "events",
    "objects",
    "lists",
    "attributes",
    "views",
    "sync_checkpoints",
    "schema_migrations",
];

/// The view's name: the slug, unless a table of the mirror has it (then `object_` / `list_`
/// before it). `taken` says whether another object or list already has the name.
pub(crate) fn view_name(parent: Parent, slug: &str, taken: impl Fn(&str) -> bool) -> String {
    let prefixed = format!("{}_{slug}", parent.as_str());
    if RESERVED.contains(&slug) || taken(slug) {
        prefixed
    } else {
        slug.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(slug: &str, kind: &str, multiselect: bool) -> AttributeColumn {
        AttributeColumn {
            slug: slug.into(),
            kind: kind.into(),
            multiselect,
        }
    }

    #[test]
    fn single_values_are_cast_to_their_natural_type() {
        assert_eq!(
            column_expression("values", &attribute("amount", "currency", false)),
            r#"(r."values"->'amount' #>> '{0,currency_value}')::numeric"#
        );
        assert_eq!(
            column_expression("values", &attribute("stage", "status", false)),
            r#"(r."values"->'stage' #>> '{0,status,title}')"#
        );
        assert_eq!(
            column_expression("values", &attribute("where", "location", false)),
            r#"(r."values"->'where' -> 0)"#
        );
    }

    #[test]
    fn multiselect_values_become_arrays() {
        let tags = column_expression("values", &attribute("tags", "select", true));
        assert!(tags.starts_with("ARRAY(SELECT (value #>> '{option,title}') FROM"));
        let people =
            column_expression("entry_values", &attribute("team", "record-reference", true));
        assert!(people.contains("(value #>> '{target_record_id}')::uuid"));
    }

    #[test]
    fn names_are_quoted_so_a_slug_cannot_break_out() {
        let sql = view_definition(
            "deals",
            Parent::Object,
            "97052eb9-e65e-443f-a297-f2d9a4a7f795",
            &[attribute("it's \"odd\"", "text", false)],
        );
        assert!(sql.contains(r#"AS "it's ""odd""""#));
        assert!(sql.contains(r#"->'it''s "odd"'"#));
    }

    #[test]
    fn a_slug_that_is_a_table_name_gets_a_prefix() {
        assert_eq!(
            view_name(Parent::Object, "notes", |_| false),
            "object_notes"
        );
        assert_eq!(
            view_name(Parent::List, "deals", |s| s == "deals"),
            "list_deals"
        );
        assert_eq!(view_name(Parent::Object, "deals", |_| false), "deals");
    }
}
