//! COCO-format caption files, as pycocoevalcap reads them: annotations (`{"images": [...],
//! "annotations": [{"image_id", "caption"}, ...]}`) and results (`[{"image_id", "caption"}, ...]`,
//! what `loadRes` takes). Errors name the file and the image id, or the line and column of bad JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// An image id as written in the file: COCO's are integers; strings are accepted too.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(untagged)]
pub enum ImageId {
    Int(i64),
    Text(String),
}

impl std::fmt::Display for ImageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageId::Int(i) => write!(f, "{i}"),
            ImageId::Text(s) => write!(f, "{s:?}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CocoError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: image {id}: {message}")]
    Image {
        path: PathBuf,
        id: ImageId,
        message: String,
    },
}

#[derive(Deserialize)]
struct Entry {
    image_id: ImageId,
    caption: String,
}

#[derive(Deserialize)]
struct Annotations {
    #[serde(default)]
    images: Vec<Image>,
    annotations: Vec<Entry>,
}

#[derive(Deserialize)]
struct Image {
    id: ImageId,
    #[serde(default)]
    file_name: Option<String>,
}

/// An annotated image: its id, its file (when the annotations name it), its references.
#[derive(Debug, Clone)]
pub struct Annotated {
    pub id: ImageId,
    pub file_name: Option<String>,
    pub references: Vec<String>,
}

fn read<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T, CocoError> {
    let text = std::fs::read_to_string(path).map_err(|source| CocoError::Read {
        path: path.into(),
        source,
    })?;
    // serde_json's message carries the line and column.
    serde_json::from_str(&text).map_err(|e| CocoError::Format {
        path: path.into(),
        message: format!("not {what}: {e}"),
    })
}

/// The reference captions of each image of a COCO annotations file, in the order pycocoevalcap
/// evaluates them: that of the file's `images` list, else of first appearance in `annotations`.
/// (The order matters a little: the tokenizer looks from one caption into the next.)
pub fn read_annotations(path: &Path) -> Result<Vec<Annotated>, CocoError> {
    let file: Annotations = read(
        path,
        "COCO annotations ({\"annotations\": [{\"image_id\", \"caption\"}]})",
    )?;
    let mut refs: BTreeMap<ImageId, Vec<String>> = BTreeMap::new();
    let listed = !file.images.is_empty();
    let mut order: Vec<(ImageId, Option<String>)> = file.images.into_iter().map(|i| (i.id, i.file_name)).collect();
    for e in file.annotations {
        if !listed && !refs.contains_key(&e.image_id) {
            order.push((e.image_id.clone(), None));
        }
        refs.entry(e.image_id).or_default().push(e.caption);
    }
    if refs.is_empty() {
        return Err(CocoError::Format {
            path: path.into(),
            message: "no annotations".into(),
        });
    }
    if let Some(id) = refs.keys().find(|id| listed && !order.iter().any(|(o, _)| o == *id)) {
        return Err(CocoError::Image {
            path: path.into(),
            id: id.clone(),
            message: "has annotations but is not in `images`".into(),
        });
    }
    // Listed images without annotations are not evaluated (pycocoevalcap would fail on them).
    Ok(order
        .into_iter()
        .filter_map(|(id, file_name)| {
            let references = refs.remove(&id)?;
            Some(Annotated {
                id,
                file_name,
                references,
            })
        })
        .collect())
}

/// The caption of each image.
pub type Captions = BTreeMap<ImageId, String>;

/// One caption per image from a COCO results file.
pub fn read_results(path: &Path) -> Result<Captions, CocoError> {
    let entries: Vec<Entry> = read(path, "a COCO results list ([{\"image_id\", \"caption\"}])")?;
    if entries.is_empty() {
        return Err(CocoError::Format {
            path: path.into(),
            message: "no results".into(),
        });
    }
    let mut out = BTreeMap::new();
    for e in entries {
        if out.insert(e.image_id.clone(), e.caption).is_some() {
            return Err(CocoError::Image {
                path: path.into(),
                id: e.image_id,
                message: "has more than one caption (pycocoevalcap scores one per image)".into(),
            });
        }
    }
    Ok(out)
}

/// Captions and their references, image by image.
pub struct Paired {
    pub ids: Vec<ImageId>,
    pub captions: Vec<String>,
    pub references: Vec<Vec<String>>,
}

/// Results and annotations paired by image, in the annotations' order: every result needs
/// references and every annotated image a result.
pub fn pair(
    mut results: BTreeMap<ImageId, String>,
    results_path: &Path,
    annotated: Vec<Annotated>,
    annotations_path: &Path,
) -> Result<Paired, CocoError> {
    let mut ids = Vec::with_capacity(results.len());
    let mut captions = Vec::with_capacity(results.len());
    let mut refs = Vec::with_capacity(results.len());
    for Annotated { id, references: r, .. } in annotated {
        let Some(caption) = results.remove(&id) else {
            return Err(CocoError::Image {
                path: results_path.into(),
                id,
                message: format!("has references in {} but no caption here", annotations_path.display()),
            });
        };
        ids.push(id);
        captions.push(caption);
        refs.push(r);
    }
    if let Some(id) = results.into_keys().next() {
        return Err(CocoError::Image {
            path: annotations_path.into(),
            id,
            message: format!("has a caption in {} but no references here", results_path.display()),
        });
    }
    Ok(Paired {
        ids,
        captions,
        references: refs,
    })
}
