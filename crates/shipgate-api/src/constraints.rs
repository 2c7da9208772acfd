//! What the derived schemas cannot say: rules between the fields of one body, written as the
//! JSON Schema keywords utoipa 5 has no builder for (`oneOf` beside a struct's properties,
//! `dependentRequired`, `contains`, `const`). The OpenAPI document adds each to the schema it
//! names, and the server refuses (422) what they refuse, so a client can tell from the document
//! alone whether a body is well formed.

use serde_json::{Value, json};
use shipgate_core::flag::SEMVER_RANGE_PATTERN;

/// Each schema of the document that carries a rule between its fields, with the keywords that
/// state it.
pub fn constraints() -> Vec<(&'static str, Value)> {
    // `shipgate_core::gate::check_decision`: a rejection says why.
    let rejection_says_why = json!({
        "if": { "required": ["verdict"], "properties": { "verdict": { "const": "reject" } } },
        "then": { "required": ["comment"], "properties": { "comment": { "type": "string" } } }
    });
    vec![
        ("DecisionRequest", rejection_says_why.clone()),
        ("FlagDecisionRequest", rejection_says_why),
        // `NotifyRetryRequest::deliveries`.
        (
            "NotifyRetryRequest",
            json!({
                "oneOf": [
                    {
                        "required": ["all"],
                        "properties": { "all": { "const": true }, "ids": { "maxItems": 0 } }
                    },
                    {
                        "required": ["ids"],
                        "properties": { "ids": { "minItems": 1 }, "all": { "const": false } }
                    }
                ]
            }),
        ),
        // The fault the chaos handler builds: an abort or a delay, a jitter only on a delay.
        (
            "ChaosRequest",
            json!({
                "oneOf": [{ "required": ["abort"] }, { "required": ["delay"] }],
                "dependentRequired": { "jitter": ["delay"] }
            }),
        ),
        // `shipgate_core::flag::check`: a rule serves one variant or a split that has a weight
        // above 0.
        (
            "Rule",
            json!({
                "oneOf": [
                    {
                        "required": ["variant"],
                        "properties": {
                            "variant": { "type": "string" },
                            "split": { "maxItems": 0 }
                        }
                    },
                    {
                        "required": ["split"],
                        "properties": {
                            "variant": { "type": "null" },
                            "split": {
                                "minItems": 1,
                                "contains": {
                                    "properties": { "weight": { "minimum": 1 } },
                                    "required": ["weight"]
                                }
                            }
                        }
                    }
                ]
            }),
        ),
        // `shipgate_core::flag::check`: what each comparison takes. A regex is read by
        // regex-lite, which knows no lookaround and no backreference, as ECMA-262 does.
        (
            "Condition",
            json!({
                "oneOf": [
                    { "properties": { "op": { "const": "equals" } } },
                    {
                        "properties": {
                            "op": { "const": "in" },
                            "value": { "type": "array" }
                        }
                    },
                    {
                        "properties": {
                            "op": { "const": "regex" },
                            "value": { "type": "string", "format": "regex" }
                        }
                    },
                    {
                        "properties": {
                            "op": { "const": "semver" },
                            "value": { "type": "string", "pattern": SEMVER_RANGE_PATTERN }
                        }
                    },
                    {
                        "properties": {
                            "op": { "enum": ["gt", "ge", "lt", "le"] },
                            "value": { "type": "number" }
                        }
                    }
                ]
            }),
        ),
    ]
}
