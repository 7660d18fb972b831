//! ghz's call data for the lavic methods: the `-d` / `-D` JSON (one object, or an array whose
//! elements are used round-robin by request number) mapped onto the request message with the
//! protobuf JSON rules ghz applies (field names as in the proto or in lowerCamelCase, enums by
//! name or number, bytes as base64, null as the default), and ghz's call template variables
//! (`{{.RequestNumber}}`, `{{.WorkerID}}`, `{{.UUID}}`, ...) substituted in string values of
//! every call.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use lavic_server::proto::{self, recommend_request::Dialogue};
use serde_json::{Map, Value};

/// The methods lavic-bench can call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `lavic.v1.Recommender.Recommend`.
    Recommend,
    /// `lavic.v1.Recommender.ModelInfo`.
    ModelInfo,
}

impl Method {
    /// Parses ghz's `--call` (`package.Service.Method` or `package.Service/Method`).
    pub fn parse(call: &str) -> Result<Self, String> {
        let c = call.trim_start_matches('/').replace('/', ".");
        match c.as_str() {
            "lavic.v1.Recommender.Recommend" => Ok(Method::Recommend),
            "lavic.v1.Recommender.ModelInfo" => Ok(Method::ModelInfo),
            _ => Err(format!(
                "unsupported call {call:?}: lavic-bench calls lavic.v1.Recommender.Recommend or lavic.v1.Recommender.ModelInfo"
            )),
        }
    }

    /// The fully-qualified name, as ghz reports it.
    pub fn full_name(self) -> &'static str {
        match self {
            Method::Recommend => "lavic.v1.Recommender.Recommend",
            Method::ModelInfo => "lavic.v1.Recommender.ModelInfo",
        }
    }

    fn parts(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Method::Recommend => ("Recommend", "lavic.v1.RecommendRequest", "lavic.v1.RecommendResponse"),
            Method::ModelInfo => ("ModelInfo", "lavic.v1.ModelInfoRequest", "lavic.v1.ModelInfoResponse"),
        }
    }
}

/// One request message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// For `Recommend`.
    Recommend(proto::RecommendRequest),
    /// For `ModelInfo`.
    ModelInfo(proto::ModelInfoRequest),
}

/// What a call's template variables are made of.
#[derive(Debug, Clone, Copy)]
pub struct CallContext {
    /// 0-based number of the request in the run (also selects the data element).
    pub request_number: u64,
    /// The worker sending it.
    pub worker_id: usize,
    /// When it is sent.
    pub now: SystemTime,
}

#[derive(Debug, Clone)]
enum Element {
    /// No template: converted once.
    Fixed(Message),
    /// Has template actions: substituted and converted for every call.
    Template(Value),
}

/// The call data of a run.
#[derive(Debug, Clone)]
pub struct CallData {
    method: Method,
    elements: Vec<Element>,
}

impl CallData {
    /// Checks every element (unknown fields, wrong types, unsupported template actions) once.
    pub fn new(method: Method, data: &Value) -> Result<Self, String> {
        let items: Vec<&Value> = match data {
            Value::Array(a) if a.is_empty() => return Err("the data array is empty".into()),
            Value::Array(a) => a.iter().collect(),
            Value::Object(_) => vec![data],
            _ => return Err("the data must be a JSON object or an array of objects".into()),
        };
        let mut elements = Vec::with_capacity(items.len());
        for (i, v) in items.into_iter().enumerate() {
            let at = |e: String| if data.is_array() { format!("data[{i}]: {e}") } else { e };
            let has_template = check_templates(v).map_err(at)?;
            let probe = substitute(v, method, &CallContext { request_number: 0, worker_id: 0, now: SystemTime::now() });
            let message = to_message(method, &probe).map_err(at)?;
            elements.push(if has_template { Element::Template(v.clone()) } else { Element::Fixed(message) });
        }
        Ok(Self { method, elements })
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The message of one call: element `request_number % len`, templates substituted.
    pub fn message(&self, ctx: &CallContext) -> Result<Message, String> {
        match &self.elements[(ctx.request_number % self.elements.len() as u64) as usize] {
            Element::Fixed(m) => Ok(m.clone()),
            Element::Template(v) => to_message(self.method, &substitute(v, self.method, ctx)),
        }
    }
}

fn to_message(method: Method, v: &Value) -> Result<Message, String> {
    match method {
        Method::Recommend => recommend_request(v).map(Message::Recommend),
        Method::ModelInfo => match v.as_object() {
            Some(o) if o.is_empty() => Ok(Message::ModelInfo(proto::ModelInfoRequest {})),
            Some(o) => Err(format!("lavic.v1.ModelInfoRequest has no field {:?}", o.keys().next().unwrap_or(&String::new()))),
            None => Err("lavic.v1.ModelInfoRequest: expected a JSON object".into()),
        },
    }
}

// ---- protobuf JSON -> lavic.v1 messages ---------------------------------------------------------

fn object<'a>(what: &str, v: &'a Value) -> Result<&'a Map<String, Value>, String> {
    v.as_object().ok_or_else(|| format!("{what}: expected a JSON object, got {v}"))
}

fn string(field: &str, v: &Value) -> Result<String, String> {
    v.as_str().map(str::to_string).ok_or_else(|| format!("{field}: expected a string, got {v}"))
}

fn strings(field: &str, v: &Value) -> Result<Vec<String>, String> {
    let a = v.as_array().ok_or_else(|| format!("{field}: expected an array, got {v}"))?;
    a.iter().enumerate().map(|(i, x)| string(&format!("{field}[{i}]"), x)).collect()
}

fn boolean(field: &str, v: &Value) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| format!("{field}: expected true or false, got {v}"))
}

/// An enum by name or number.
fn enumeration(field: &str, v: &Value, by_name: impl Fn(&str) -> Option<i32>) -> Result<i32, String> {
    match v {
        Value::String(s) => by_name(s).ok_or_else(|| format!("{field}: unknown value {s:?}")),
        Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()).ok_or_else(|| format!("{field}: bad number {n}")),
        _ => Err(format!("{field}: expected an enum name or number, got {v}")),
    }
}

/// Bytes as base64 (standard or URL-safe alphabet, padded or not).
fn bytes(field: &str, v: &Value) -> Result<Vec<u8>, String> {
    let s = string(field, v)?;
    let normal: String = s.trim_end_matches('=').chars().map(|c| match c { '-' => '+', '_' => '/', c => c }).collect();
    base64::engine::general_purpose::STANDARD_NO_PAD.decode(normal).map_err(|e| format!("{field}: invalid base64: {e}"))
}

fn recommend_request(v: &Value) -> Result<proto::RecommendRequest, String> {
    const M: &str = "lavic.v1.RecommendRequest";
    let mut r = proto::RecommendRequest::default();
    for (k, val) in object(M, v)? {
        if val.is_null() {
            continue;
        }
        let dialogue = match k.as_str() {
            "request_id" | "requestId" => {
                r.request_id = string(k, val)?;
                None
            }
            "context" => Some(Dialogue::Context(string(k, val)?)),
            "turns" => Some(Dialogue::Turns(dialogue(val)?)),
            "candidate_ids" | "candidateIds" => {
                r.candidate_ids = strings(k, val)?;
                None
            }
            "inline_items" | "inlineItems" => {
                let a = val.as_array().ok_or_else(|| format!("{k}: expected an array"))?;
                r.inline_items = a.iter().enumerate().map(|(i, x)| inline_item(&format!("{k}[{i}]"), x)).collect::<Result<_, _>>()?;
                None
            }
            "mode" => {
                r.mode = enumeration(k, val, |s| proto::Mode::from_str_name(s).map(|m| m as i32))?;
                None
            }
            "include_scores" | "includeScores" => {
                r.include_scores = boolean(k, val)?;
                None
            }
            "unknown_id_policy" | "unknownIdPolicy" => {
                r.unknown_id_policy = enumeration(k, val, |s| proto::UnknownIdPolicy::from_str_name(s).map(|m| m as i32))?;
                None
            }
            other => return Err(format!("{M} has no field {other:?}")),
        };
        if let Some(d) = dialogue {
            if r.dialogue.is_some() {
                return Err(format!("{M}: context and turns are one oneof; give only one"));
            }
            r.dialogue = Some(d);
        }
    }
    Ok(r)
}

fn dialogue(v: &Value) -> Result<proto::Dialogue, String> {
    let mut d = proto::Dialogue::default();
    for (k, val) in object("turns (lavic.v1.Dialogue)", v)? {
        match k.as_str() {
            "turns" => {
                let a = val.as_array().ok_or("turns.turns: expected an array")?;
                for (i, t) in a.iter().enumerate() {
                    let mut turn = proto::Turn::default();
                    for (tk, tv) in object(&format!("turns.turns[{i}]"), t)? {
                        match tk.as_str() {
                            "role" => turn.role = enumeration("role", tv, |s| proto::Role::from_str_name(s).map(|r| r as i32))?,
                            "text" => turn.text = string("text", tv)?,
                            other => return Err(format!("lavic.v1.Turn has no field {other:?}")),
                        }
                    }
                    d.turns.push(turn);
                }
            }
            other => return Err(format!("lavic.v1.Dialogue has no field {other:?}")),
        }
    }
    Ok(d)
}

fn inline_item(what: &str, v: &Value) -> Result<proto::InlineItem, String> {
    let mut it = proto::InlineItem::default();
    for (k, val) in object(what, v)? {
        if val.is_null() {
            continue;
        }
        match k.as_str() {
            "id" => it.id = string(k, val)?,
            "title" => it.title = string(k, val)?,
            "image" => it.image = bytes(&format!("{what}.image"), val)?,
            other => return Err(format!("lavic.v1.InlineItem has no field {other:?}")),
        }
    }
    Ok(it)
}

// ---- ghz call templates ------------------------------------------------------------------------

/// The template variables ghz offers that lavic-bench fills in.
const VARIABLES: [&str; 14] = [
    "RequestNumber",
    "WorkerID",
    "FullyQualifiedName",
    "MethodName",
    "ServiceName",
    "InputName",
    "OutputName",
    "IsClientStreaming",
    "IsServerStreaming",
    "Timestamp",
    "TimestampUnix",
    "TimestampUnixMilli",
    "TimestampUnixNano",
    "UUID",
];

/// Actions `{{ ... }}` in `s`: (start, end, variable name).
fn actions(s: &str) -> Result<Vec<(usize, usize, &str)>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(open) = s[at..].find("{{").map(|i| at + i) {
        let close = s[open..].find("}}").map(|i| open + i).ok_or_else(|| format!("unclosed template action in {s:?}"))?;
        let inner = s[open + 2..close].trim();
        let name = inner.strip_prefix('.').filter(|n| VARIABLES.contains(n)).ok_or_else(|| {
            format!("unsupported template action {{{{{inner}}}}} in {s:?} (lavic-bench knows .{})", VARIABLES.join(", ."))
        })?;
        out.push((open, close + 2, name));
        at = close + 2;
    }
    Ok(out)
}

/// Whether `v` holds template actions (errors on unsupported ones).
fn check_templates(v: &Value) -> Result<bool, String> {
    Ok(match v {
        Value::String(s) => !actions(s)?.is_empty(),
        Value::Array(a) => a.iter().map(check_templates).collect::<Result<Vec<_>, _>>()?.into_iter().any(|x| x),
        Value::Object(o) => o.values().map(check_templates).collect::<Result<Vec<_>, _>>()?.into_iter().any(|x| x),
        _ => false,
    })
}

fn uuid_v4(seed: u64) -> String {
    // splitmix64: distinct per request, no cryptographic claims.
    let mut x = seed;
    let mut next = || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let (a, b) = (next(), next());
    let b = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    let a = (a & 0xFFFF_FFFF_FFFF_0FFF) | 0x4000;
    format!("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", a >> 32, (a >> 16) & 0xFFFF, a & 0xFFFF, b >> 48, b & 0xFFFF_FFFF_FFFF)
}

fn value_of(name: &str, method: Method, ctx: &CallContext) -> String {
    let since = ctx.now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (short, input, output) = method.parts();
    match name {
        "RequestNumber" => ctx.request_number.to_string(),
        "WorkerID" => ctx.worker_id.to_string(),
        "FullyQualifiedName" => method.full_name().into(),
        "MethodName" => short.into(),
        "ServiceName" => "lavic.v1.Recommender".into(),
        "InputName" => input.into(),
        "OutputName" => output.into(),
        "IsClientStreaming" | "IsServerStreaming" => "false".into(),
        "Timestamp" => crate::report::rfc3339(ctx.now, false),
        "TimestampUnix" => since.as_secs().to_string(),
        "TimestampUnixMilli" => since.as_millis().to_string(),
        "TimestampUnixNano" => since.as_nanos().to_string(),
        "UUID" => uuid_v4(since.as_nanos() as u64 ^ ctx.request_number.rotate_left(32)),
        _ => String::new(),
    }
}

/// Every string value of `v` with its template actions replaced.
fn substitute(v: &Value, method: Method, ctx: &CallContext) -> Value {
    match v {
        Value::String(s) => {
            let Ok(acts) = actions(s) else { return v.clone() };
            if acts.is_empty() {
                return v.clone();
            }
            let mut out = String::with_capacity(s.len());
            let mut at = 0;
            for (start, end, name) in acts {
                out.push_str(&s[at..start]);
                out.push_str(&value_of(name, method, ctx));
                at = end;
            }
            out.push_str(&s[at..]);
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, method, ctx)).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), substitute(x, method, ctx))).collect()),
        _ => v.clone(),
    }
}

/// Request metadata (`-m`): a JSON object of strings, templates substituted per call.
pub fn metadata(v: &Value, method: Method, ctx: &CallContext) -> Result<Vec<(String, String)>, String> {
    object("metadata", v)?;
    check_templates(v)?;
    let v = substitute(v, method, ctx);
    let o = object("metadata", &v)?;
    o.iter().map(|(k, x)| Ok((k.to_ascii_lowercase(), string(&format!("metadata.{k}"), x)?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(n: u64) -> CallContext {
        CallContext { request_number: n, worker_id: 3, now: UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000) }
    }

    #[test]
    fn protojson_names_enums_bytes_and_oneof() {
        let data = json!({
            "requestId": "r1",
            "turns": {"turns": [{"role": "ROLE_SEEKER", "text": "hi"}, {"role": 2, "text": "yo"}]},
            "candidate_ids": ["A", "B"],
            "inlineItems": [{"id": "B", "title": "T", "image": "aGVsbG8"}],
            "mode": "MODE_FREE",
            "include_scores": true,
            "unknownIdPolicy": 2
        });
        let cd = CallData::new(Method::Recommend, &data).unwrap();
        let Message::Recommend(r) = cd.message(&ctx(0)).unwrap() else { panic!() };
        assert_eq!(r.request_id, "r1");
        let Some(Dialogue::Turns(d)) = &r.dialogue else { panic!() };
        assert_eq!((d.turns[0].role, d.turns[1].role), (proto::Role::Seeker as i32, proto::Role::Commenter as i32));
        assert_eq!(r.inline_items[0].image, b"hello");
        assert_eq!((r.mode, r.include_scores, r.unknown_id_policy), (proto::Mode::Free as i32, true, 2));

        for bad in [
            json!({"context": "x", "candidates": ["A"]}),
            json!({"context": "x", "turns": {"turns": []}}),
            json!({"mode": "FAST"}),
            json!({"inline_items": [{"id": "A", "image": "***"}]}),
            json!({"candidate_ids": "A"}),
            json!([]),
            json!("x"),
        ] {
            assert!(CallData::new(Method::Recommend, &bad).is_err(), "{bad}");
        }
        assert!(CallData::new(Method::ModelInfo, &json!({})).is_ok());
        assert!(CallData::new(Method::ModelInfo, &json!({"x": 1})).is_err());
    }

    #[test]
    fn arrays_are_round_robin_and_templates_are_filled_per_call() {
        let data = json!([
            {"request_id": "a-{{.RequestNumber}}-{{ .WorkerID }}", "context": "x"},
            {"request_id": "b", "context": "y"}
        ]);
        let cd = CallData::new(Method::Recommend, &data).unwrap();
        let id = |n| match cd.message(&ctx(n)).unwrap() {
            Message::Recommend(r) => r.request_id,
            _ => unreachable!(),
        };
        assert_eq!((id(0), id(1), id(2), id(5)), ("a-0-3".into(), "b".into(), "a-2-3".into(), "b".into()));
        assert!(CallData::new(Method::Recommend, &json!({"request_id": "{{randomString 4}}"})).unwrap_err().contains("unsupported"));
        let u = uuid_v4(42);
        assert_eq!((u.len(), &u[14..15]), (36, "4"));
        assert_ne!(uuid_v4(1), uuid_v4(2));
    }

    #[test]
    fn calls_parse_in_both_ghz_forms() {
        assert_eq!(Method::parse("lavic.v1.Recommender.Recommend"), Ok(Method::Recommend));
        assert_eq!(Method::parse("lavic.v1.Recommender/ModelInfo"), Ok(Method::ModelInfo));
        assert!(Method::parse("lavic.v1.Catalog.UpsertItems").is_err());
    }
}
