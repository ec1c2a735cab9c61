//! What to generate from: a [`Request`] (the user's text, its images, the options) and
//! [`ImageInput`].

use std::path::{Path, PathBuf};

use super::GenerationOptions;

/// The user prompt of [`Model::caption`](crate::Model::caption).
pub const CAPTION_PROMPT: &str = "Describe this image.";

/// An image for a prompt: already decoded, or a file to decode (any supported format; EXIF
/// orientation applied), with an optional soft-token budget of its own.
///
/// The budget (70, 140, 280, 560 or 1120 soft tokens) sets how finely the image is cut into
/// patches: 1120 for a document or small print next to 70 for a thumbnail, in one prompt. Without
/// one, the model's budget applies ([`ModelBuilder::with_max_soft_tokens`](crate::ModelBuilder::with_max_soft_tokens),
/// else the checkpoint's `processor_config.json`).
///
/// ```
/// use gemma_wgpu::{ImageInput, Request};
/// let req = Request::new("Read the page, then say what the thumbnail shows.")
///     .with_image(ImageInput::path("scan.png").with_max_soft_tokens(1120))
///     .with_image(ImageInput::path("thumb.jpg").with_max_soft_tokens(70));
/// assert_eq!(req.images()[1].max_soft_tokens(), Some(70));
/// ```
#[derive(Debug, Clone)]
pub struct ImageInput {
    source: ImageSource,
    max_soft_tokens: Option<u32>,
}

/// Where an [`ImageInput`]'s pixels come from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// A decoded image.
    Dynamic(image::DynamicImage),
    /// An image file.
    Path(PathBuf),
}

impl ImageInput {
    /// An image file (decoded when the request runs).
    pub fn path(path: impl Into<PathBuf>) -> Self {
        ImageInput {
            source: ImageSource::Path(path.into()),
            max_soft_tokens: None,
        }
    }

    /// A decoded image.
    pub fn image(image: image::DynamicImage) -> Self {
        ImageInput {
            source: ImageSource::Dynamic(image),
            max_soft_tokens: None,
        }
    }

    /// Sets this image's soft-token budget (70, 140, 280, 560 or 1120; another value is a typed
    /// error when the request runs).
    pub fn with_max_soft_tokens(mut self, tokens: u32) -> Self {
        self.max_soft_tokens = Some(tokens);
        self
    }

    /// This image's own budget, if set.
    pub fn max_soft_tokens(&self) -> Option<u32> {
        self.max_soft_tokens
    }

    /// The pixels' source.
    pub fn source(&self) -> &ImageSource {
        &self.source
    }
}

impl From<image::DynamicImage> for ImageInput {
    fn from(img: image::DynamicImage) -> Self {
        ImageInput::image(img)
    }
}

impl From<PathBuf> for ImageInput {
    fn from(p: PathBuf) -> Self {
        ImageInput::path(p)
    }
}

impl From<&Path> for ImageInput {
    fn from(p: &Path) -> Self {
        ImageInput::path(p)
    }
}

impl From<&PathBuf> for ImageInput {
    fn from(p: &PathBuf) -> Self {
        ImageInput::path(p.clone())
    }
}

impl From<&str> for ImageInput {
    fn from(p: &str) -> Self {
        ImageInput::path(p)
    }
}

impl From<String> for ImageInput {
    fn from(p: String) -> Self {
        ImageInput::path(p)
    }
}

/// One user turn to generate a reply to: the text, the images shown before it (in order), and
/// the options (the model's generation defaults,
/// [`Model::generation_defaults`](crate::Model::generation_defaults), when none are given).
///
/// Run it to completion ([`ChatSession::send`](super::ChatSession::send),
/// [`Model::generate`](crate::Model::generate)), as a stream
/// ([`ChatSession::stream`](super::ChatSession::stream)) or in the background
/// ([`ChatSession::spawn`](super::ChatSession::spawn), [`Model::spawn`](crate::Model::spawn)).
///
/// ```
/// use gemma_wgpu::{GenerationOptions, Request};
/// let req = Request::new("What is in this picture?")
///     .with_image("cat.jpg")
///     .with_options(GenerationOptions::default().with_max_new_tokens(64));
/// assert_eq!(req.images().len(), 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Request {
    text: String,
    images: Vec<ImageInput>,
    options: Option<GenerationOptions>,
}

impl Request {
    /// A text-only request with the model's generation defaults.
    pub fn new(text: impl Into<String>) -> Self {
        Request {
            text: text.into(),
            images: Vec::new(),
            options: None,
        }
    }

    /// [`CAPTION_PROMPT`] about `image` (what [`Model::caption`](crate::Model::caption) runs).
    pub fn caption(image: impl Into<ImageInput>) -> Self {
        Request::new(CAPTION_PROMPT).with_image(image)
    }

    /// Adds an image (shown before the text, after the images added before).
    pub fn with_image(mut self, image: impl Into<ImageInput>) -> Self {
        self.images.push(image.into());
        self
    }

    /// Adds several images, in order.
    pub fn with_images<I>(mut self, images: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<ImageInput>,
    {
        self.images.extend(images.into_iter().map(Into::into));
        self
    }

    /// Sets the generation options.
    pub fn with_options(mut self, options: GenerationOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The images, in order.
    pub fn images(&self) -> &[ImageInput] {
        &self.images
    }

    /// The options, if set (else the model's defaults apply).
    pub fn options(&self) -> Option<&GenerationOptions> {
        self.options.as_ref()
    }

    /// The parts: text, images, options.
    pub(crate) fn into_parts(self) -> (String, Vec<ImageInput>, Option<GenerationOptions>) {
        (self.text, self.images, self.options)
    }
}

impl From<&str> for Request {
    fn from(text: &str) -> Self {
        Request::new(text)
    }
}

impl From<String> for Request {
    fn from(text: String) -> Self {
        Request::new(text)
    }
}

impl From<&String> for Request {
    fn from(text: &String) -> Self {
        Request::new(text.as_str())
    }
}
