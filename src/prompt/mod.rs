//! What the model reads: chat messages and the checkpoint's chat template ([`ChatTemplate`]),
//! and the image soft tokens of a prompt ([`expand_image_tokens`]).

pub(crate) mod render;
mod template;

dev_mod!(
    /// Image decoding, resizing and patchifying.
    preprocess
);
dev_mod!(
    /// The tokenizer wrapper.
    tokenizer
);

pub use crate::model::media::expand_image_tokens;
pub use template::{BUILTIN_GEMMA4_TEMPLATE, ChatTemplate, Content, Message, Role, TemplateSource};
