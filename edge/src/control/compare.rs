//! Comparing two flavors' answers to one read, field by field, after normalising what
//! may legitimately differ: the order of a user's emails, and the fields the operator
//! chose to ignore.

use std::collections::BTreeMap;

use serde_json::Value;
use tandem::proto::user::v1 as pb;
use tonic::Status;

use crate::error::code_name;
use crate::routes::users::UserView;

/// An answer as it is compared: `{"status": "OK", …the user as the REST API shows
/// it…}`, or `{"status": "NOT_FOUND"}` for a refusal. `None` for a fault (the flavor
/// failed, was overloaded, or did not answer in time): that says nothing about what it
/// would have answered, so there is nothing to compare.
pub fn answer(result: &Result<pb::User, Status>) -> Option<Value> {
    match result {
        Ok(user) => {
            let mut value = serde_json::to_value(UserView::from(user.clone())).ok()?;
            if let Some(object) = value.as_object_mut() {
                object.insert("status".into(), Value::from("OK"));
            }
            Some(value)
        }
        Err(status) if is_unanswered(status.code()) => None,
        Err(status) => Some(serde_json::json!({ "status": code_name(status.code()) })),
    }
}

/// The codes that are no answer: the rollout's faults, and a call shed, cancelled or
/// aborted on the way (a flavor waking from a stall resets its backlog of streams).
fn is_unanswered(code: tonic::Code) -> bool {
    use tonic::Code;
    crate::control::stats::is_fault(code)
        || matches!(
            code,
            Code::ResourceExhausted | Code::Cancelled | Code::Aborted
        )
}

/// How two answers differ, field by field, minus the ignored fields. Answers of
/// different statuses differ in `status` alone: a missing user is one regression, not
/// one per field it would have had.
pub fn answers_differ(a: &Value, b: &Value, ignore: &[String]) -> Vec<(String, Value, Value)> {
    let (status_a, status_b) = (&a["status"], &b["status"]);
    if status_a != status_b {
        return vec![("status".into(), status_a.clone(), status_b.clone())];
    }
    differences(&flatten(a), &flatten(b), ignore)
}

/// Every leaf of an answer by its path (`deliveryAddress.city`); a list is one leaf, and
/// the list of emails is sorted, since its order means nothing.
fn flatten(value: &Value) -> BTreeMap<String, Value> {
    let mut leaves = BTreeMap::new();
    walk("", value, &mut leaves);
    leaves
}

fn walk(path: &str, value: &Value, leaves: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(fields) => {
            for (key, child) in fields {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                walk(&child_path, child, leaves);
            }
        }
        Value::Array(items) if path == "emails" => {
            let mut sorted: Vec<Value> = items.clone();
            sorted.sort_by_key(|v| v.to_string());
            leaves.insert(path.to_owned(), Value::Array(sorted));
        }
        other => {
            leaves.insert(path.to_owned(), other.clone());
        }
    }
}

/// Whether `path` is ignored: named in the list, or inside a field that is.
fn ignored(path: &str, ignore: &[String]) -> bool {
    ignore
        .iter()
        .any(|i| path == i || (path.starts_with(i.as_str()) && path[i.len()..].starts_with('.')))
}

/// The paths whose values differ (a field present in one answer only differs), minus
/// the ignored ones, with both values.
fn differences(
    a: &BTreeMap<String, Value>,
    b: &BTreeMap<String, Value>,
    ignore: &[String],
) -> Vec<(String, Value, Value)> {
    let mut paths: Vec<&String> = a.keys().chain(b.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter(|p| !ignored(p, ignore))
        .filter_map(|p| {
            let left = a.get(p).cloned().unwrap_or(Value::Null);
            let right = b.get(p).cloned().unwrap_or(Value::Null);
            (left != right).then(|| (p.clone(), left, right))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn email_order_does_not_matter_but_case_and_content_do() {
        let a = flatten(
            &json!({"emails": ["b@x.io", "a@x.io"], "deliveryAddress": {"city": "Ottawa"}}),
        );
        let b = flatten(
            &json!({"emails": ["a@x.io", "b@x.io"], "deliveryAddress": {"city": "Ottawa"}}),
        );
        assert!(differences(&a, &b, &[]).is_empty());
        let c =
            flatten(&json!({"emails": ["A@x.io", "b@x.io"], "deliveryAddress": {"city": "Hull"}}));
        let found: Vec<String> = differences(&a, &c, &[]).into_iter().map(|d| d.0).collect();
        assert_eq!(found, ["deliveryAddress.city", "emails"]);
    }

    #[test]
    fn ignored_fields_and_their_insides_are_left_out() {
        let a = flatten(
            &json!({"firstName": "Rob", "updatedAt": "1", "deliveryAddress": {"city": "a"}}),
        );
        let b = flatten(&json!({"firstName": "Bob", "deliveryAddress": {"city": "b"}}));
        let found: Vec<String> =
            differences(&a, &b, &["deliveryAddress".into(), "updatedAt".into()])
                .into_iter()
                .map(|d| d.0)
                .collect();
        assert_eq!(found, ["firstName"]);
        // "updated" is not a prefix of "updatedAt"'s path segments.
        assert!(!ignored("updatedAt", &["updated".into()]));
    }

    #[test]
    fn refusals_compare_by_status_and_faults_not_at_all() {
        assert_eq!(
            answer(&Err(Status::not_found("x"))),
            Some(json!({"status": "NOT_FOUND"}))
        );
        assert_eq!(answer(&Err(Status::unavailable("down"))), None);
        assert_eq!(answer(&Err(Status::resource_exhausted("shed"))), None);
        assert_eq!(answer(&Err(Status::cancelled("reset"))), None);
        let user = pb::User {
            user_id: "u".into(),
            emails: vec!["a@b.co".into()],
            ..Default::default()
        };
        let ok = answer(&Ok(user)).unwrap();
        assert_eq!(
            (ok["status"].clone(), ok["userId"].clone()),
            (json!("OK"), json!("u"))
        );
    }

    #[test]
    fn a_refusal_against_a_user_differs_in_status_alone() {
        let user = pb::User {
            user_id: "u".into(),
            first_name: Some("Ann".into()),
            emails: vec!["a@b.co".into()],
            ..Default::default()
        };
        let found = answer(&Ok(user)).unwrap();
        let missing = answer(&Err(Status::not_found("no such user"))).unwrap();
        assert_eq!(
            answers_differ(&found, &missing, &[]),
            [("status".to_owned(), json!("OK"), json!("NOT_FOUND"))]
        );
        assert!(answers_differ(&found, &found, &[]).is_empty());
    }
}
