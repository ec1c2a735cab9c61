//! The prompt of a turn: the conversation rendered through the chat template, tokenized, with
//! each image placeholder expanded into its soft-token run, and the turn's images encoded.
//! Placement itself (expanding, counting, pairing soft tokens with feature rows) is
//! [`crate::model::media`]'s; this file only feeds it the conversation.

use crate::error::{Error, Result};
use crate::generate::{ImageInput, ImageSource};
use crate::gpu::GpuTensor;
use crate::model::Model;
use crate::model::media;
use crate::model::vision::ImagePatches;
use crate::prompt::Message;

/// Encodes images into per-image soft-token features (each prepared just before its group's
/// encode, see [`media::encode_each`]).
pub(crate) fn encode_images(model: &Model, images: Vec<ImageInput>) -> Result<Vec<GpuTensor>> {
    media::encode_each(model.vision(), images, |img| prepare_image(model, &img))
}

/// Decodes and preprocesses one image into its patches at its own budget (or the model's).
pub(crate) fn prepare_image(model: &Model, img: &ImageInput) -> Result<ImagePatches> {
    let budget = img.max_soft_tokens();
    match img.source() {
        ImageSource::Path(p) => model.prepare_image_file_with(p, budget),
        ImageSource::Dynamic(d) => model.prepare_image_with(d, budget),
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
    media::expand_image_tokens(
        &ids,
        cfg.image_token_id,
        cfg.boi_token_id,
        cfg.eoi_token_id,
        &soft,
    )
}
