//! Chat messages and the checkpoint's chat template (rendered with minijinja, spec §6).
//!
//! The template is the one shipped next to the weights: `chat_template.jinja`, else
//! `chat_template.json`, else the `chat_template` field of `tokenizer_config.json` (a string, or a
//! list of named templates of which `default` is used). Only when the checkpoint has none is a
//! built-in Gemma 4 template used ([`BUILTIN_GEMMA4_TEMPLATE`]).
//!
//! ```text
//! <bos><|turn>user\n<|image|>Describe this image.<turn|>\n<|turn>model\n
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{Environment, ErrorKind, Value};
use serde_json::json;

use crate::error::{Error, Result};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A system prompt (rendered as a leading `system` turn).
    System,
    /// The user.
    User,
    /// The model (passed to the template as `"assistant"`; Gemma templates write `model`).
    Assistant,
}

impl Role {
    /// The role string templates expect (`"system"`, `"user"`, `"assistant"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One item of a message's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Text (templates trim it).
    Text(String),
    /// An image placeholder; the images themselves travel separately, in order.
    Image,
}

/// A chat message: a role and its content items, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Content items in order (images and text may interleave).
    pub content: Vec<Content>,
}

impl Message {
    /// A message with the given role and content.
    pub fn new(role: Role, content: Vec<Content>) -> Self {
        Message { role, content }
    }

    /// A user message with text only.
    pub fn user(text: impl Into<String>) -> Self {
        Message::new(Role::User, vec![Content::Text(text.into())])
    }

    /// A user message with `n_images` images first, then the text.
    pub fn user_with_images(n_images: usize, text: impl Into<String>) -> Self {
        let mut content = vec![Content::Image; n_images];
        content.push(Content::Text(text.into()));
        Message::new(Role::User, content)
    }

    /// A system prompt.
    pub fn system(text: impl Into<String>) -> Self {
        Message::new(Role::System, vec![Content::Text(text.into())])
    }

    /// A model reply (role `assistant`).
    pub fn assistant(text: impl Into<String>) -> Self {
        Message::new(Role::Assistant, vec![Content::Text(text.into())])
    }

    /// Number of image items.
    pub fn n_images(&self) -> usize {
        self.content
            .iter()
            .filter(|c| matches!(c, Content::Image))
            .count()
    }

    /// The text items joined (images left out).
    pub fn text(&self) -> String {
        self.content
            .iter()
            .filter_map(|c| match c {
                Content::Text(t) => Some(t.as_str()),
                Content::Image => None,
            })
            .collect()
    }

    /// The Hugging Face message structure: `{"role", "content": [{"type": "image"} |
    /// {"type": "text", "text"}]}`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let content: Vec<serde_json::Value> = self
            .content
            .iter()
            .map(|c| match c {
                Content::Text(t) => json!({"type": "text", "text": t}),
                Content::Image => json!({"type": "image"}),
            })
            .collect();
        json!({"role": self.role.as_str(), "content": content})
    }
}

/// A built-in Gemma 4 (E2B/E4B) chat template for checkpoints that ship none (spec §6): a
/// leading system turn for a system prompt and/or thinking, content items concatenated in order
/// with text trimmed, `assistant` written as `model`, bare `<|image|>` placeholders.
///
/// It renders plain chats (system, user, assistant; images; thinking on/off) exactly like the
/// official E2B/E4B template, including its quirk of writing each text item of a list-form
/// system message as `trim(text) + ' '` (so `Message::system("Be terse.")` gives
/// `<|turn>system\nBe terse. <turn|>`). Tools and thinking history are not supported.
pub const BUILTIN_GEMMA4_TEMPLATE: &str = r#"{{- bos_token -}}
{%- set loop_messages = messages -%}
{%- set thinking = enable_thinking is defined and enable_thinking -%}
{%- if thinking or (messages and messages[0]['role'] == 'system') -%}
{{- '<|turn>system\n' -}}
{%- if thinking -%}{{- '<|think|>\n' -}}{%- endif -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- if messages[0]['content'] is string -%}
{{- messages[0]['content'] | trim -}}
{%- else -%}
{%- for item in messages[0]['content'] -%}
{%- if item['type'] == 'text' -%}{{- item['text'] | trim + ' ' -}}{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- set loop_messages = messages[1:] -%}
{%- endif -%}
{{- '<turn|>\n' -}}
{%- endif -%}
{%- for message in loop_messages -%}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
{{- '<|turn>' + role + '\n' -}}
{%- if message['content'] is string -%}
{{- message['content'] | trim -}}
{%- else -%}
{%- for item in message['content'] -%}
{%- if item['type'] == 'image' -%}
{{- '<|image|>' -}}
{%- elif item['type'] == 'audio' -%}
{{- '<|audio|>' -}}
{%- elif item['type'] == 'text' -%}
{{- item['text'] | trim -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{{- '<turn|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|turn>model\n' -}}
{%- endif -%}
"#;

/// Where a chat template came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    /// A file of the checkpoint (`chat_template.jinja`, `chat_template.json` or
    /// `tokenizer_config.json`).
    File(PathBuf),
    /// [`BUILTIN_GEMMA4_TEMPLATE`].
    Builtin,
}

const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template plus the special-token strings it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: TemplateSource,
    /// Special-token strings from tokenizer_config.json (`bos_token`, `eos_token`, ...).
    tokens: BTreeMap<String, String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

fn template_err(what: impl std::fmt::Display, e: minijinja::Error) -> Error {
    let mut msg = format!("{what}: {e}");
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    Error::Template(msg)
}

fn parse_json(text: Option<&str>, path: &Path) -> Result<Option<serde_json::Value>> {
    match text {
        Some(text) => serde_json::from_str(text).map(Some).map_err(|e| {
            Error::Template(format!(
                "{} is not valid JSON ({e}); re-download it",
                path.display()
            ))
        }),
        None => Ok(None),
    }
}

/// Picks the template out of a `chat_template` JSON field: a string, or a list of
/// `{"name", "template"}` of which `default` is taken.
fn template_from_field(v: &serde_json::Value, path: &Path) -> Result<Option<String>> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s.clone())),
        serde_json::Value::Array(list) => {
            let named = |name: &str| {
                list.iter().find_map(|t| {
                    (t.get("name")?.as_str()? == name)
                        .then(|| t.get("template")?.as_str().map(str::to_string))
                        .flatten()
                })
            };
            match named("default") {
                Some(t) => Ok(Some(t)),
                None => Err(Error::Template(format!(
                    "{}: chat_template is a list of named templates without one named \
                     \"default\"; add one or ship chat_template.jinja",
                    path.display()
                ))),
            }
        }
        _ => Err(Error::Template(format!(
            "{}: chat_template must be a string or a list of named templates",
            path.display()
        ))),
    }
}

/// Special-token strings of a tokenizer_config.json: every top-level `*_token` field that is a
/// string (or an `{"content": ...}` object).
fn special_tokens(cfg: &serde_json::Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(obj) = cfg.as_object() {
        for (k, v) in obj {
            if !k.ends_with("_token") {
                continue;
            }
            let s = match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string),
                _ => None,
            };
            if let Some(s) = s {
                out.insert(k.clone(), s);
            }
        }
    }
    out
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// `tojson` as Hugging Face registers it: JSON with non-ASCII kept, Python's `", "`/`": "`
/// separators, optional `indent`. Object keys come out sorted (the order of `serde_json` maps),
/// where Python would keep insertion order.
fn tojson(
    value: Value,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // Accepted and ignored (Python's defaults are what we produce anyway).
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("separators")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let text = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            let mut buf = Vec::new();
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
            serde::Serialize::serialize(&json, &mut ser)
                .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            String::from_utf8_lossy(&buf).into_owned()
        }
        // Python's json.dumps default separators: ", " and ": ".
        None => python_json(&json),
    };
    Ok(Value::from_safe_string(text))
}

/// `json.dumps(v, ensure_ascii=False)` formatting (", " and ": " separators).
fn python_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(a) => {
            let items: Vec<String> = a.iter().map(python_json).collect();
            format!("[{}]", items.join(", "))
        }
        serde_json::Value::Object(o) => {
            let items: Vec<String> = o
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}: {}",
                        serde_json::Value::String(k.clone()),
                        python_json(v)
                    )
                })
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        other => other.to_string(),
    }
}

impl ChatTemplate {
    /// Loads the checkpoint's template from `dir` (see the module docs for the search order),
    /// with the special-token strings of `tokenizer_config.json`; falls back to
    /// [`BUILTIN_GEMMA4_TEMPLATE`] when the checkpoint has none.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        use crate::checkpoint::files::{self, read_optional};
        let read = |name: &str| {
            let path = dir.join(name);
            read_optional(&path).map_err(|source| Error::Io { path, source })
        };
        Self::from_sources(
            dir,
            read(files::TOKENIZER_CONFIG)?.as_deref(),
            read(files::CHAT_TEMPLATE_JINJA)?,
            read(files::CHAT_TEMPLATE_JSON)?.as_deref(),
        )
    }

    /// [`from_dir`](Self::from_dir) on the contents of the three files, as read by
    /// `Checkpoint::open` (`None`: the file does not
    /// exist); `dir` names the files in errors.
    pub fn from_sources(
        dir: &Path,
        tokenizer_config: Option<&str>,
        chat_template_jinja: Option<String>,
        chat_template_json: Option<&str>,
    ) -> Result<Self> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = parse_json(tokenizer_config, &cfg_path)?;
        let tokens = cfg.as_ref().map(special_tokens).unwrap_or_default();

        if let Some(src) = chat_template_jinja {
            let jinja_path = dir.join("chat_template.jinja");
            return Self::new(src, TemplateSource::File(jinja_path), tokens);
        }
        let json_path = dir.join("chat_template.json");
        if let Some(v) = parse_json(chat_template_json, &json_path)? {
            let field = v.get("chat_template").cloned().unwrap_or(v);
            if let Some(src) = template_from_field(&field, &json_path)? {
                return Self::new(src, TemplateSource::File(json_path), tokens);
            }
        }
        if let Some(field) = cfg.as_ref().and_then(|c| c.get("chat_template")) {
            if let Some(src) = template_from_field(field, &cfg_path)? {
                return Self::new(src, TemplateSource::File(cfg_path), tokens);
            }
        }
        log::warn!(
            "{} has no chat template (chat_template.jinja / tokenizer_config.json); using the \
             built-in Gemma 4 template",
            dir.display()
        );
        Self::builtin(tokens)
    }

    /// The built-in Gemma 4 template with the given special-token strings (`bos_token` defaults
    /// to `<bos>`, `eos_token` to `<eos>`).
    pub fn builtin(tokens: BTreeMap<String, String>) -> Result<Self> {
        Self::new(
            BUILTIN_GEMMA4_TEMPLATE.to_string(),
            TemplateSource::Builtin,
            tokens,
        )
    }

    /// Compiles a template source. `tokens` are the special-token strings passed to it
    /// (`bos_token`, `eos_token`, ...); `bos_token` defaults to `<bos>` and `eos_token` to
    /// `<eos>` when absent.
    pub fn new(
        template: String,
        source: TemplateSource,
        mut tokens: BTreeMap<String, String>,
    ) -> Result<Self> {
        tokens
            .entry("bos_token".into())
            .or_insert_with(|| "<bos>".into());
        tokens
            .entry("eos_token".into())
            .or_insert_with(|| "<eos>".into());
        let mut env = Environment::new();
        // Hugging Face renders with jinja2 trim_blocks + lstrip_blocks.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| template_err("jinja syntax configuration", e))?;
        env.set_syntax(syntax);
        minijinja_contrib::add_to_environment(&mut env);
        // Python string/dict methods (.get, .split, .strip, .startswith, .items, ...).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        let what = match &source {
            TemplateSource::File(p) => p.display().to_string(),
            TemplateSource::Builtin => "built-in Gemma 4 template".to_string(),
        };
        env.add_template_owned(TEMPLATE_NAME, template)
            .map_err(|e| template_err(format!("cannot compile {what}"), e))?;
        Ok(ChatTemplate {
            env,
            source,
            tokens,
        })
    }

    /// Where the template came from.
    pub fn source(&self) -> &TemplateSource {
        &self.source
    }

    /// The special-token strings the template is rendered with.
    pub fn special_tokens(&self) -> &BTreeMap<String, String> {
        &self.tokens
    }

    /// Renders `messages` (thinking off). With `add_generation_prompt` the result ends with the
    /// opening of a model turn (`<|turn>model\n`).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// Like [`render`](Self::render) with extra template variables, e.g.
    /// `{"enable_thinking": true}` or `{"tools": [...]}`.
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let msgs: Vec<serde_json::Value> = messages.iter().map(Message::to_hf_json).collect();
        self.render_json(
            &serde_json::Value::Array(msgs),
            add_generation_prompt,
            extra,
        )
    }

    /// Renders messages already in the Hugging Face JSON structure (content a string or a
    /// list of typed items; tool calls etc. as the template expects them).
    pub fn render_json(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        for (k, v) in &self.tokens {
            ctx.insert(k.clone(), Value::from(v.clone()));
        }
        ctx.insert(
            "messages".into(),
            Value::from(minijinja::value::Serde(messages)),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        for (k, v) in extra {
            ctx.insert(k.clone(), Value::from(minijinja::value::Serde(v)));
        }
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| template_err("template lookup", e))?;
        tmpl.render(ctx)
            .map_err(|e| template_err("rendering the chat template failed", e))
    }
}
