//! The settings that apply to one client: its user and workspace files, merged as Qwen
//! Code merges them (the workspace overrides the user key by key).
use std::path::{Path, PathBuf};
use std::sync::Arc;

use secrecy::SecretString;

use super::file::{Excluded, FileValues};
use super::{AuthType, Parsed};

/// Built by [`super::Settings::view`]; cheap to build and to ask.
#[derive(Debug, Clone, Default)]
pub struct View {
    user_file: Option<PathBuf>,
    pub(super) user: Option<Arc<Parsed>>,
    pub(super) workspace: Option<Arc<Parsed>>,
    pub(super) warnings: Vec<String>,
}

impl View {
    pub(super) fn new(user_file: Option<PathBuf>) -> Self {
        Self {
            user_file,
            ..Self::default()
        }
    }

    /// The user settings file (where `qwen auth switch` writes), when the client has one.
    pub fn user_file(&self) -> Option<&Path> {
        self.user_file.as_deref()
    }

    /// Files left out, each naming the file and what is wrong (the line, for bad JSON).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Workspace first, then user: the order in which a key's presence decides.
    fn files(&self) -> impl Iterator<Item = &FileValues> + Clone {
        [&self.workspace, &self.user]
            .into_iter()
            .filter_map(|f| f.as_deref()?.as_ref().ok())
    }

    /// The method the settings select: `security.auth.selectedType`, else the older
    /// top-level `selectedAuthType`. As in Qwen Code the presence of a key, not its
    /// validity, decides which value counts: a workspace `selectedType` hides the user's,
    /// and any `selectedType` hides every `selectedAuthType`.
    pub fn method(&self) -> Option<AuthType> {
        self.files()
            .find_map(|f| f.selected_type)
            .or_else(|| self.files().find_map(|f| f.selected_auth_type))
            .flatten()
    }

    /// `model.name`.
    pub fn model(&self) -> Option<&str> {
        self.files()
            .find_map(|f| f.model_name.as_ref())
            .and_then(Option::as_deref)
    }

    /// `security.auth.apiKey`.
    pub fn api_key(&self) -> Option<&SecretString> {
        self.files()
            .find_map(|f| f.api_key.as_ref())
            .and_then(Option::as_ref)
    }

    /// `security.auth.baseUrl`.
    pub fn base_url(&self) -> Option<&str> {
        self.files()
            .find_map(|f| f.base_url.as_ref())
            .and_then(Option::as_deref)
    }

    /// `advanced.excludedEnvVars` merged as Qwen Code merges it (union, user first).
    pub fn exclusions(&self) -> Exclusions {
        let mut list: Option<Vec<String>> = None;
        let mut substring = None;
        for f in [&self.user, &self.workspace]
            .into_iter()
            .filter_map(|f| f.as_deref()?.as_ref().ok())
        {
            match &f.excluded {
                Some(Excluded::List(items)) => {
                    let l = list.get_or_insert_with(Vec::new);
                    for s in items {
                        if !l.contains(s) {
                            l.push(s.clone());
                        }
                    }
                }
                Some(Excluded::Substring(s)) => substring = Some(s.clone()),
                None => {}
            }
        }
        match (list, substring) {
            (Some(l), _) => Exclusions::List(l),
            (None, Some(s)) => Exclusions::Substring(s),
            (None, None) => Exclusions::Default,
        }
    }
}

/// Which `.env` keys a project file may not set: `DEBUG` and `DEBUG_MODE` unless
/// `advanced.excludedEnvVars` says otherwise. A string value keeps JS semantics:
/// `"A_B".includes(k)` is a substring test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusions {
    Default,
    List(Vec<String>),
    Substring(String),
}

impl Exclusions {
    pub const DEFAULT: [&'static str; 2] = ["DEBUG", "DEBUG_MODE"];

    pub fn excludes(&self, key: &str) -> bool {
        match self {
            Self::Default => Self::DEFAULT.contains(&key),
            Self::List(l) => l.iter().any(|x| x == key),
            Self::Substring(s) => s.contains(key),
        }
    }
}
