//! Tokenizer, chat template, image-token expansion, generation options, incremental
//! detokenization and stop strings (CPU only).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gemma_wgpu::Error;
use gemma_wgpu::generate::{Detokenizer, GenerationOptions, Sampling, StopMatcher};
use gemma_wgpu::prompt::tokenizer::Tokenizer;
use gemma_wgpu::prompt::{
    ChatTemplate, Content, Message, Role, TemplateSource, expand_image_tokens,
};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn e2b() -> PathBuf {
    fixtures().join("e2b-like")
}

fn golden() -> Value {
    let text = std::fs::read_to_string(e2b().join("tokenizer_golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A fresh empty directory under the system temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gemma-wgpu-tok-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn tokenizer_matches_reference_encodings() {
    let tok = Tokenizer::from_dir(&e2b()).unwrap();
    assert_eq!(tok.vocab_size(), 512);
    for case in golden()["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = ids_of(&case["ids"]);
        assert_eq!(tok.encode(text).unwrap(), want, "encode {text:?}");
        assert_eq!(
            tok.decode(&want, false).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decode {text:?}"
        );
    }
    // Special-token strings in the text map to their ids; nothing is added around the text.
    assert_eq!(tok.encode("<|image|>").unwrap(), vec![500]);
    assert_eq!(tok.encode("<bos><|turn>").unwrap(), vec![2, 4]);
    assert_eq!(tok.token_id("<|turn>"), Some(4));
    assert_eq!(tok.token_id("<turn|>"), Some(5));
    assert_eq!(tok.token_id("<|image>"), Some(501));
    assert_eq!(tok.token_id("no such token"), None);
    // skip_special drops special tokens.
    assert_eq!(tok.decode(&[2, 4, 287, 285, 349], true).unwrap(), "user");
    // Out-of-range ids are a typed error, not a panic.
    assert!(matches!(
        tok.decode(&[100_000], false),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn tokenizer_missing_file_names_it() {
    let dir = temp_dir("no-tokenizer");
    let err = Tokenizer::from_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::write(dir.join("tokenizer.json"), "{not json").unwrap();
    let err = Tokenizer::from_dir(&dir).unwrap_err();
    assert!(matches!(err, Error::Tokenizer(_)), "{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn golden_messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let role = match m["role"].as_str().unwrap() {
                "system" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                r => panic!("role {r}"),
            };
            let content = match &m["content"] {
                Value::String(s) => vec![Content::Text(s.clone())],
                Value::Array(items) => items
                    .iter()
                    .map(|it| match it["type"].as_str().unwrap() {
                        "image" => Content::Image,
                        "text" => Content::Text(it["text"].as_str().unwrap().into()),
                        t => panic!("type {t}"),
                    })
                    .collect(),
                _ => panic!("content"),
            };
            Message::new(role, content)
        })
        .collect()
}

#[test]
fn template_renders_reference_chats() {
    let tok = Tokenizer::from_dir(&e2b()).unwrap();
    let tmpl = ChatTemplate::from_dir(&e2b()).unwrap();
    assert_eq!(
        tmpl.source(),
        &TemplateSource::File(e2b().join("chat_template.jinja"))
    );
    let builtin = ChatTemplate::builtin(BTreeMap::new()).unwrap();
    for case in golden()["chat"].as_array().unwrap() {
        let msgs = golden_messages(&case["messages"]);
        let mut extra = serde_json::Map::new();
        extra.insert("enable_thinking".into(), case["enable_thinking"].clone());
        let want = case["rendered"].as_str().unwrap();
        for t in [&tmpl, &builtin] {
            let got = t.render_with(&msgs, true, &extra).unwrap();
            assert_eq!(got, want, "{:?}", t.source());
        }
        assert_eq!(tok.encode(want).unwrap(), ids_of(&case["ids"]));
    }
}

#[test]
fn template_user_image_turn_exact() {
    let tmpl = ChatTemplate::from_dir(&e2b()).unwrap();
    let got = tmpl
        .render(
            &[Message::user_with_images(1, "Describe this image.")],
            true,
        )
        .unwrap();
    assert_eq!(
        got,
        "<bos><|turn>user\n<|image|>Describe this image.<turn|>\n<|turn>model\n"
    );
    // Without the generation prompt the model turn is not opened.
    let got = tmpl.render(&[Message::user("Hi")], false).unwrap();
    assert_eq!(got, "<bos><|turn>user\nHi<turn|>\n");
}

#[test]
fn template_system_user_assistant_user() {
    let msgs = [
        Message::system("  You are terse. "),
        Message::user("Hello!"),
        Message::assistant("Hi, how are you?"),
        Message::user_with_images(2, " Compare these. "),
    ];
    let want = "<bos><|turn>system\nYou are terse.<turn|>\n<|turn>user\nHello!<turn|>\n\
                <|turn>model\nHi, how are you?<turn|>\n<|turn>user\n<|image|><|image|>Compare \
                these.<turn|>\n<|turn>model\n";
    let tmpl = ChatTemplate::from_dir(&e2b()).unwrap();
    assert_eq!(tmpl.render(&msgs, true).unwrap(), want);
    // The built-in template follows the official E2B/E4B one, which writes list-form system
    // text as `trim(text) + ' '`.
    let builtin = ChatTemplate::builtin(BTreeMap::new()).unwrap();
    let want_builtin = want.replace("You are terse.<turn|>", "You are terse. <turn|>");
    assert_eq!(builtin.render(&msgs, true).unwrap(), want_builtin);
}

#[test]
fn template_sources_and_jinja_features() {
    // chat_template in tokenizer_config.json as a list of named templates: "default" is used;
    // bos_token comes from the config.
    let dir = temp_dir("tmpl-list");
    let cfg = serde_json::json!({
        "bos_token": {"content": "<B>"},
        "eos_token": "<E>",
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m['role'] }}:{{ m['content'][0]['text'] | trim }};{% endfor %}{{ eos_token }}"}
        ]
    });
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let t = ChatTemplate::from_dir(&dir).unwrap();
    assert_eq!(
        t.render(&[Message::user(" a "), Message::assistant("b")], false)
            .unwrap(),
        "<B>user:a;assistant:b;<E>"
    );

    // String form, jinja features HF templates use: raise_exception, loop controls, tojson,
    // Python string methods, namespace.
    let src = r#"{%- set ns = namespace(n=0) -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}{{ raise_exception('no system role: ' + m.content[0].text) }}{%- endif -%}
{%- if loop.index > 2 -%}{%- break -%}{%- endif -%}
{%- if m.get('content')[0].text.startswith('skip') -%}{%- continue -%}{%- endif -%}
{%- set ns.n = ns.n + 1 -%}
{{ m.content[0].text.strip().upper() }}|{{ m.content | tojson }}
{% endfor -%}
{{ ns.n }}"#;
    let cfg = serde_json::json!({"chat_template": src, "bos_token": "<bos>"});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let t = ChatTemplate::from_dir(&dir).unwrap();
    let got = t
        .render(
            &[
                Message::user(" hé "),
                Message::user("skip me"),
                Message::user("never"),
            ],
            false,
        )
        .unwrap();
    // tojson: Python's separators, non-ASCII kept; object keys come out sorted.
    assert_eq!(got, "HÉ|[{\"text\": \" hé \", \"type\": \"text\"}]\n1");
    let err = t.render(&[Message::system("x")], false).unwrap_err();
    assert!(matches!(err, Error::Template(_)), "{err}");
    assert!(err.to_string().contains("no system role: x"), "{err}");

    // chat_template.jinja wins over tokenizer_config.json.
    std::fs::write(dir.join("chat_template.jinja"), "J{{ bos_token }}").unwrap();
    assert_eq!(
        ChatTemplate::from_dir(&dir)
            .unwrap()
            .render(&[], false)
            .unwrap(),
        "J<bos>"
    );

    // A broken template is a typed error naming the file.
    std::fs::write(dir.join("chat_template.jinja"), "{% for %}").unwrap();
    let err = ChatTemplate::from_dir(&dir).unwrap_err();
    assert!(matches!(err, Error::Template(_)), "{err}");
    assert!(err.to_string().contains("chat_template.jinja"), "{err}");

    // No template at all: the built-in one, with <bos> by default.
    let empty = temp_dir("tmpl-none");
    let t = ChatTemplate::from_dir(&empty).unwrap();
    assert_eq!(t.source(), &TemplateSource::Builtin);
    assert_eq!(
        t.render(&[Message::user("Hi")], true).unwrap(),
        "<bos><|turn>user\nHi<turn|>\n<|turn>model\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn image_token_expansion() {
    let (img, boi, eoi) = (500, 501, 502);
    let ids = [2, 4, img, 10, img, 11];
    let got = expand_image_tokens(&ids, img, boi, eoi, &[2, 3]).unwrap();
    assert_eq!(
        got,
        vec![2, 4, boi, img, img, eoi, 10, boi, img, img, img, eoi, 11]
    );
    // No images: unchanged.
    assert_eq!(
        expand_image_tokens(&[1, 2, 3], img, boi, eoi, &[]).unwrap(),
        vec![1, 2, 3]
    );
    // Count mismatch in both directions.
    match expand_image_tokens(&ids, img, boi, eoi, &[2]) {
        Err(Error::ImageTokenMismatch {
            placeholders: 2,
            images: 1,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        expand_image_tokens(&[1], img, boi, eoi, &[4]),
        Err(Error::ImageTokenMismatch {
            placeholders: 0,
            images: 1
        })
    ));
}

/// The chat golden's prompts are reproduced by template + tokenizer + expansion.
#[test]
fn chat_golden_prompts_reproduced() {
    let bytes = std::fs::read(fixtures().join("chat/golden.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let i64s = |name: &str| -> Vec<u32> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    };
    let tok = Tokenizer::from_dir(&e2b()).unwrap();
    let tmpl = ChatTemplate::from_dir(&e2b()).unwrap();
    let soft: Vec<usize> = i64s("num_soft_tokens")
        .iter()
        .map(|&n| n as usize)
        .collect();
    for (name, q) in [
        ("caption_ids", "Describe this image."),
        ("ask_ids", "What is in the picture?"),
    ] {
        let text = tmpl
            .render(&[Message::user_with_images(1, q)], true)
            .unwrap();
        let ids = tok.encode(&text).unwrap();
        let ids = expand_image_tokens(&ids, 500, 501, 502, &soft).unwrap();
        assert_eq!(ids, i64s(name), "{name}");
    }
    let mut msgs = vec![Message::user("Hello there.")];
    let t1 = tok.encode(&tmpl.render(&msgs, true).unwrap()).unwrap();
    assert_eq!(t1, i64s("chat_turn1_ids"));
    let reply = tok.decode(&i64s("chat_turn1_greedy"), true).unwrap();
    msgs.push(Message::assistant(reply));
    msgs.push(Message::user("And then?"));
    let t2 = tok.encode(&tmpl.render(&msgs, true).unwrap()).unwrap();
    assert_eq!(t2, i64s("chat_turn2_ids"));
}

#[test]
fn generation_options_from_dir() {
    let o = GenerationOptions::from_dir(&e2b()).unwrap();
    assert_eq!(
        o.sampling,
        Sampling::Sample {
            temperature: 1.0,
            top_k: 64,
            top_p: 0.95,
            min_p: 0.0
        }
    );
    assert_eq!(o.stop_tokens, vec![1, 5, 494]);
    assert_eq!(o.max_new_tokens, 256);
    assert_eq!(o.repetition_penalty, 1.0);
    o.validate().unwrap();

    // No generation_config.json: greedy, eos from config.json.
    let dir = temp_dir("gen-none");
    std::fs::write(dir.join("config.json"), r#"{"eos_token_id": [1, 106]}"#).unwrap();
    let o = GenerationOptions::from_dir(&dir).unwrap();
    assert_eq!(o.sampling, Sampling::Greedy);
    assert_eq!(o.stop_tokens, vec![1, 106]);
    assert_eq!(o.max_new_tokens, 256);
    std::fs::write(
        dir.join("config.json"),
        r#"{"text_config": {"eos_token_id": 7}}"#,
    )
    .unwrap();
    assert_eq!(
        GenerationOptions::from_dir(&dir).unwrap().stop_tokens,
        vec![7]
    );
    // A wrongly typed field is a typed error naming it.
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"do_sample": true, "temperature": "hot"}"#,
    )
    .unwrap();
    let err = GenerationOptions::from_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("temperature"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);

    // Builders.
    let o = GenerationOptions::default()
        .with_max_new_tokens(5)
        .with_top_k(10)
        .with_temperature(0.7)
        .with_seed(9)
        .with_stop_string("END");
    assert_eq!(
        o.sampling,
        Sampling::Sample {
            temperature: 0.7,
            top_k: 10,
            top_p: 1.0,
            min_p: 0.0
        }
    );
    assert_eq!((o.max_new_tokens, o.seed), (5, 9));
    assert_eq!(o.stop_strings, vec!["END".to_string()]);
    assert!(o.clone().greedy().sampling.is_greedy());
    assert!(o.with_top_p(1.5).validate().is_err());
}

#[test]
fn detokenizer_is_utf8_safe() {
    let tok = Arc::new(Tokenizer::from_dir(&e2b()).unwrap());
    let text = "héllo wörld 😀 Ωmega";
    let ids = tok.encode(text).unwrap();
    // The fixture vocabulary has no é/ö/😀: they are byte-fallback tokens, so some ids alone
    // decode to incomplete UTF-8.
    let byte_tokens = ids
        .iter()
        .filter(|&&i| tok.id_to_token(i).unwrap().starts_with("<0x"))
        .count();
    assert!(byte_tokens >= 8, "{byte_tokens} byte tokens in {ids:?}");
    let full = tok.decode(&ids, true).unwrap();
    assert_eq!(full, text);

    let mut d = Detokenizer::new(tok.clone());
    let mut deltas = Vec::new();
    for &id in &ids {
        if let Some(delta) = d.push(id).unwrap() {
            assert!(!delta.is_empty());
            assert!(!delta.contains('\u{FFFD}'), "delta {delta:?}");
            deltas.push(delta);
        }
    }
    deltas.push(d.finish().unwrap());
    assert_eq!(deltas.concat(), full);
    assert_eq!(d.text(), full);
    assert!(deltas.len() > 3);

    // An incomplete sequence at the end is held back and flushed (as U+FFFD) by finish().
    let mut d = Detokenizer::new(tok.clone());
    let e2 = tok.token_id("<0xE2>").unwrap();
    let a = tok.encode("a").unwrap();
    assert_eq!(d.push(a[0]).unwrap().as_deref(), Some("a"));
    assert_eq!(d.push(e2).unwrap(), None);
    assert_eq!(d.finish().unwrap(), "\u{FFFD}");
    // Special tokens are skipped by default and kept on request.
    let mut d = Detokenizer::new(tok.clone());
    assert_eq!(d.push(5).unwrap(), None);
    let mut d = Detokenizer::new(tok).with_skip_special(false);
    assert_eq!(d.push(5).unwrap().as_deref(), Some("<turn|>"));
}

/// A small byte-fallback tokenizer built with the tokenizers API, independent of the fixture.
#[test]
fn detokenizer_with_in_test_byte_fallback_tokenizer() {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    for b in 0..=255u32 {
        vocab.insert(format!("<0x{b:02X}>"), (1 + b).into());
    }
    for (i, t) in ["▁", "h", "l", "o", "w", "r", "d", "ll", "▁w"]
        .iter()
        .enumerate()
    {
        vocab.insert((*t).into(), (257 + i).into());
    }
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab, "merges": [["l", "l"], ["▁", "w"]]}
    });
    let inner: tokenizers::Tokenizer = json.to_string().parse().unwrap();
    let tok = Arc::new(Tokenizer::from_tokenizer(inner));
    let text = "héllo wörld 😀";
    let ids = tok.encode(text).unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    let mut d = Detokenizer::new(tok);
    let mut out = String::new();
    for id in ids {
        if let Some(delta) = d.push(id).unwrap() {
            assert!(!delta.contains('\u{FFFD}'), "{delta:?}");
            out.push_str(&delta);
        }
    }
    out.push_str(&d.finish().unwrap());
    assert_eq!(out, text);
}

fn run_stops(stops: &[&str], deltas: &[&str]) -> (String, bool) {
    let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
    let mut out = String::new();
    for d in deltas {
        let (emit, stopped) = m.push(d);
        out.push_str(&emit);
        if stopped {
            assert!(m.stopped());
            return (out, true);
        }
    }
    out.push_str(&m.finish());
    (out, false)
}

#[test]
fn stop_matcher() {
    // Split across deltas; the stop string is not emitted.
    assert_eq!(
        run_stops(&["<end>"], &["Hello <e", "n", "d> tail"]),
        ("Hello ".into(), true)
    );
    // A false start is released once it cannot match.
    assert_eq!(
        run_stops(&["<end>"], &["a <e", "x> b"]),
        ("a <ex> b".into(), false)
    );
    // Held text at the end of the stream is flushed by finish().
    assert_eq!(run_stops(&["STOP"], &["abc ST"]), ("abc ST".into(), false));
    // The earliest of several stop strings wins; multi-byte text stays intact.
    assert_eq!(
        run_stops(&["wörld", "ö"], &["h", "é", "llo w", "ör", "ld"]),
        ("héllo w".into(), true)
    );
    // Emission is incremental: text that cannot start a stop string is not held back.
    let mut m = StopMatcher::new(vec!["\n\nUser:".into()]);
    assert_eq!(m.push("Hi there"), ("Hi there".into(), false));
    assert_eq!(m.push("!\n"), ("!".into(), false));
    assert_eq!(m.push("\nUs"), (String::new(), false));
    assert_eq!(m.push("er: x"), (String::new(), true));
    assert_eq!(m.push("more"), (String::new(), true));
    // No stop strings: everything passes straight through.
    assert_eq!(run_stops(&[], &["a", "b"]), ("ab".into(), false));
}
