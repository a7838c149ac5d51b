//! Errors of the geometry loaders and of building a [`super::GeoIndex`].

use std::path::PathBuf;

/// Why routes or zones could not be loaded or indexed; every variant names the file
/// (or source) and, where it applies, the feature or line.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A GeoJSON document is not valid JSON.
    #[error("{origin}: invalid JSON: {source}")]
    Json {
        /// File name or other description of where the text came from.
        origin: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The document is JSON but not a FeatureCollection / Feature.
    #[error("{origin}: {reason}")]
    Document {
        /// File name or other description of where the text came from.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// One feature is invalid (missing id, bad geometry, bad property ...).
    #[error("{origin}: feature #{index}{}: {reason}", .id.as_deref().map(|i| format!(" ({i})")).unwrap_or_default())]
    Feature {
        /// File name or other description of where the text came from.
        origin: String,
        /// Position of the feature in the collection, from 0.
        index: usize,
        /// The feature's route_id / zone_id, when it has one.
        id: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// A GTFS file is missing a column or has an invalid row.
    #[error("{}:{line}: {reason}", .file.display())]
    Gtfs {
        /// The GTFS file.
        file: PathBuf,
        /// Line number, from 1 (0 for the file as a whole).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Two routes or two zones share an id.
    #[error("duplicate {what} id {id:?}")]
    Duplicate {
        /// "route" or "zone".
        what: &'static str,
        /// The repeated id.
        id: String,
    },
}
