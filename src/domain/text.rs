//! The one rule for text a client sends: no NUL and no other control characters, except line
//! breaks and tabs in the few fields that are prose (descriptions, chat). Applied before anything
//! reaches the store, the same on both backends (PostgreSQL refuses NUL in text; SQLite would
//! store it), by the REST body extractor, the path/query guard and the socket's chat.

/// Body fields (by JSON key) whose text may span lines.
pub const MULTILINE_FIELDS: [&str; 2] = ["description", "text"];

/// Why `text` is refused, if it is.
pub fn control_problem(text: &str, multiline: bool) -> Option<&'static str> {
    let allowed = |c: char| multiline && matches!(c, '\n' | '\r' | '\t');
    if text.contains('\0') {
        Some("must not contain NUL characters")
    } else if text.chars().any(|c| c.is_control() && !allowed(c)) {
        Some(if multiline {
            "must not contain control characters other than line breaks and tabs"
        } else {
            "must not contain control characters"
        })
    } else {
        None
    }
}

/// Every string of a JSON document (object keys included) that breaks the rule, as
/// (field path, problem). A string is multiline when its key is one of [`MULTILINE_FIELDS`].
pub fn json_problems(value: &serde_json::Value) -> Vec<(String, &'static str)> {
    let mut found = Vec::new();
    walk(value, "", false, &mut found);
    found
}

fn walk(
    value: &serde_json::Value,
    path: &str,
    multiline: bool,
    found: &mut Vec<(String, &'static str)>,
) {
    use serde_json::Value;
    match value {
        Value::String(text) => {
            if let Some(problem) = control_problem(text, multiline) {
                found.push((field_name(path), problem));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &format!("{path}[{i}]"), multiline, found);
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                if let Some(problem) = control_problem(key, false) {
                    found.push((field_name(&child), problem));
                    continue;
                }
                walk(
                    item,
                    &child,
                    MULTILINE_FIELDS.contains(&key.as_str()),
                    found,
                );
            }
        }
        _ => {}
    }
}

/// A field path fit for an error message: control characters in keys shown escaped.
fn field_name(path: &str) -> String {
    let name: String = path.escape_debug().collect();
    if name.is_empty() {
        "body".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prose_fields_keep_line_breaks_others_refuse_every_control() {
        assert_eq!(control_problem("plain text, ünïcode ✓", false), None);
        assert_eq!(control_problem("two\nlines\tand tab", true), None);
        assert!(control_problem("two\nlines", false).is_some());
        assert!(control_problem("nul\0", true).is_some());
        assert!(control_problem("bell\u{7}", true).is_some());
        assert!(control_problem("c1\u{85}", false).is_some());
    }

    #[test]
    fn finds_every_bad_string_with_its_path() {
        let body = json!({
            "title": "a\u{0}b",
            "description": "line\nline",
            "settings": {"x": ["ok", "bad\u{1b}"]},
            "k\u{0}": 1,
            "text": "chat\r\nok"
        });
        let mut fields: Vec<String> = json_problems(&body).into_iter().map(|(f, _)| f).collect();
        fields.sort();
        assert_eq!(fields, vec!["k\\0", "settings.x[1]", "title"]);
    }
}
