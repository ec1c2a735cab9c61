//! Image soft tokens in the prompt: encoding images into features, expanding the image
//! placeholders of the rendered prompt into soft-token runs, finding those runs again, and
//! concatenating the features of several images (spec §4/§6).
//!
//! The bodies are moved verbatim from `session.rs` and `chat.rs`; the model's media module is
//! to take them over.

use crate::error::{Error, Result};
use crate::generate::ImageInput;
use crate::gpu::{DType, GpuTensor};
use crate::model::Model;
use crate::prompt::Message;

/// Encodes images into per-image soft-token features.
pub(crate) fn encode_images(model: &Model, images: Vec<ImageInput>) -> Result<Vec<GpuTensor>> {
    if images.is_empty() {
        return Ok(Vec::new());
    }
    let vision = model.vision().ok_or_else(|| {
        Error::InvalidArgument("images given but the checkpoint has no vision tower".into())
    })?;
    let mut out = Vec::with_capacity(images.len());
    for img in images {
        let patches = match img {
            ImageInput::Path(p) => model.prepare_image_file(&p)?,
            ImageInput::Dynamic(d) => model.prepare_image(&d)?,
        };
        out.push(vision.encode(&patches, false)?.0);
    }
    Ok(out)
}

/// Concatenates feature tensors `[n_i, hidden]` into one `[sum, hidden]` (one submit).
pub(crate) fn concat_features(model: &Model, parts: &[GpuTensor]) -> Result<Option<GpuTensor>> {
    match parts {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        _ => {
            let ctx = model.context();
            let h = model.config().text_config.hidden_size;
            let total: usize = parts.iter().map(|p| p.shape[0]).sum();
            let all = GpuTensor::zeros(ctx, &[total, h], DType::F32)?;
            let mut rec = ctx.recorder();
            let mut row = 0;
            for p in parts {
                rec.copy(
                    &p.buffer,
                    p.offset,
                    &all.buffer,
                    (row * h * 4) as u64,
                    p.bytes(),
                );
                row += p.shape[0];
            }
            rec.submit()?;
            Ok(Some(all))
        }
    }
}

/// Renders `system` + `messages` (+ generation prompt), tokenizes, expands images.
pub(crate) fn prompt_ids(
    model: &Model,
    system: Option<&str>,
    messages: &[Message],
    images: &[GpuTensor],
) -> Result<Vec<u32>> {
    let (tok, tmpl) = match (model.tokenizer(), model.chat_template()) {
        (Some(t), Some(c)) => (t, c),
        _ => {
            return Err(Error::InvalidArgument(format!(
                "{} has no tokenizer.json: text generation needs the tokenizer and chat \
                 template files of the checkpoint",
                model.dir().display()
            )));
        }
    };
    let mut all = Vec::with_capacity(messages.len() + 1);
    if let Some(s) = system {
        all.push(Message::system(s));
    }
    all.extend_from_slice(messages);
    let text = tmpl.render(&all, true)?;
    let ids = tok.encode(&text)?;
    let cfg = model.config();
    let soft: Vec<usize> = images.iter().map(|t| t.shape[0]).collect();
    expand_image_tokens(
        &ids,
        cfg.image_token_id,
        cfg.boi_token_id,
        cfg.eoi_token_id,
        &soft,
    )
}

/// Start positions of the image soft-token runs of `ids` (one per image, in order).
pub(crate) fn image_runs(ids: &[u32], image_token: u32) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        if ids[i] == image_token {
            let s = i;
            while i < ids.len() && ids[i] == image_token {
                i += 1;
            }
            runs.push((s, i));
        } else {
            i += 1;
        }
    }
    runs
}

/// Expands each image placeholder: the i-th occurrence of `image_token` in `ids` becomes
/// `boi`, `image_token` × `soft_tokens[i]`, `eoi` (the processor's form, spec §4/§6).
///
/// The number of occurrences must equal `soft_tokens.len()`; otherwise
/// [`Error::ImageTokenMismatch`].
pub fn expand_image_tokens(
    ids: &[u32],
    image_token: u32,
    boi: u32,
    eoi: u32,
    soft_tokens: &[usize],
) -> Result<Vec<u32>> {
    let placeholders = ids.iter().filter(|&&t| t == image_token).count();
    if placeholders != soft_tokens.len() {
        return Err(Error::ImageTokenMismatch {
            placeholders,
            images: soft_tokens.len(),
        });
    }
    let extra: usize = soft_tokens.iter().map(|n| n + 1).sum();
    let mut out = Vec::with_capacity(ids.len() + extra);
    let mut next = soft_tokens.iter();
    for &t in ids {
        if t == image_token {
            // Counts were checked above, so `next` cannot run out.
            let n = next.next().copied().unwrap_or(0);
            out.push(boi);
            out.extend(std::iter::repeat_n(image_token, n));
            out.push(eoi);
        } else {
            out.push(t);
        }
    }
    Ok(out)
}
