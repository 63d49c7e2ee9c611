//! Roles as data: `agents/*.toml` (one role each), the prompt templates in `prompts/*.md` and the
//! tool-call grammars in `grammars/gbnf/*.gbnf`, embedded in the binary and overridable (or
//! extended) from the user's config directory (`<config dir>/agents/`, `prompts/`,
//! `grammars/gbnf/`). Plain data and rendering; no I/O beyond reading those directories.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::tools::TOOL_NAMES;
use super::{Error, Result};

/// The built-in role files.
pub const BUILTIN_ROLES: &[(&str, &str)] = &[
    ("writer", include_str!("../../agents/writer.toml")),
    ("reviewer", include_str!("../../agents/reviewer.toml")),
    ("tester", include_str!("../../agents/tester.toml")),
];

/// The built-in prompt templates.
pub const BUILTIN_PROMPTS: &[(&str, &str)] = &[
    ("system", include_str!("../../prompts/system.md")),
    ("writer", include_str!("../../prompts/writer.md")),
    ("reviewer", include_str!("../../prompts/reviewer.md")),
    ("tester", include_str!("../../prompts/tester.md")),
];

/// The built-in tool-call grammars.
pub const BUILTIN_GRAMMARS: &[(&str, &str)] = &[
    ("writer", include_str!("../../grammars/gbnf/writer.gbnf")),
    (
        "reviewer",
        include_str!("../../grammars/gbnf/reviewer.gbnf"),
    ),
    ("tester", include_str!("../../grammars/gbnf/tester.gbnf")),
    ("full", include_str!("../../grammars/gbnf/full.gbnf")),
];

/// What the orchestrator does with a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleKind {
    /// Changes the code; exactly one writer runs per round, first.
    Writer,
    /// Reviews the writer's change and returns findings and a verdict; all must approve.
    Reviewer,
    /// Writes tests for the change; the test command must pass.
    Tester,
}

/// Sampling settings of a role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingSpec {
    /// 0 means greedy (reproducible).
    pub temperature: f32,
    /// Nucleus sampling threshold (1.0 = off).
    pub top_p: f32,
    /// Top-k (0 = off).
    pub top_k: i32,
    /// Seed for non-greedy sampling.
    pub seed: u32,
    /// The temperature of the role's calls in a round that follows a round whose tests failed
    /// (0: `temperature` again). Greedy decoding answers the same prompt the same way, so a
    /// writer asked again mostly rewrites the code that failed; sampling gives a fresh attempt,
    /// and the tests pick between the attempts (the loop keeps the best-tested round).
    pub retry_temperature: f32,
}

impl Default for SamplingSpec {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            retry_temperature: 0.0,
        }
    }
}

/// One role, as read from `agents/<name>.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    /// The agent id on every event of this role.
    pub name: String,
    /// One line for humans.
    pub description: String,
    /// What the orchestrator does with it.
    pub kind: RoleKind,
    /// Prompt template name (`prompts/<prompt>.md`).
    pub prompt: String,
    /// Grammar name (`grammars/gbnf/<grammar>.gbnf`).
    pub grammar: String,
    /// Tools the role may call.
    pub tools: Vec<String>,
    /// Model calls per turn.
    pub max_steps: u32,
    /// Tokens per model call.
    pub max_tokens: u32,
    /// Paths the role may write (`write_file`, `edit`), as globs relative to the repository
    /// root (`**/test_*.py`); empty: any path. The tester's keep it to test files, so it cannot
    /// change the code it tests.
    #[serde(default)]
    pub writable: Vec<String>,
    /// Sampling settings.
    #[serde(default)]
    pub sampling: SamplingSpec,
}

impl RoleSpec {
    /// Whether the role may write `path` (relative, `/`-separated); `Err` names the globs.
    pub fn may_write(&self, path: &str) -> std::result::Result<(), String> {
        if self.writable.is_empty() {
            return Ok(());
        }
        let set = writable_set(&self.writable).map_err(|e| e.to_string())?;
        let path = path.trim_start_matches("./");
        if set.is_match(path) {
            Ok(())
        } else {
            Err(format!(
                "the {} may write only files matching {}; `{path}` is not one",
                self.name,
                self.writable.join(", ")
            ))
        }
    }
}

fn writable_set(globs: &[String]) -> std::result::Result<globset::GlobSet, globset::Error> {
    let mut builder = globset::GlobSetBuilder::new();
    for g in globs {
        builder.add(
            globset::GlobBuilder::new(g)
                .literal_separator(true)
                .build()?,
        );
    }
    builder.build()
}

/// All roles with the prompts and grammars they use.
#[derive(Debug, Clone)]
pub struct Roles {
    roles: Vec<RoleSpec>,
    prompts: BTreeMap<String, String>,
    grammars: BTreeMap<String, String>,
}

impl Roles {
    /// The built-in roles only.
    pub fn builtin() -> Result<Self> {
        Self::load(None)
    }

    /// The built-in roles, prompts and grammars, with files in `config_dir` (`agents/*.toml`,
    /// `prompts/*.md`, `grammars/gbnf/*.gbnf`) replacing those of the same name or adding new
    /// ones. Every role is checked: its prompt and grammar exist and its tools are known and
    /// producible by its grammar.
    pub fn load(config_dir: Option<&Path>) -> Result<Self> {
        let mut role_files: BTreeMap<String, String> = BUILTIN_ROLES
            .iter()
            .map(|(n, t)| ((*n).to_string(), (*t).to_string()))
            .collect();
        let mut prompts: BTreeMap<String, String> = BUILTIN_PROMPTS
            .iter()
            .map(|(n, t)| ((*n).to_string(), (*t).to_string()))
            .collect();
        let mut grammars: BTreeMap<String, String> = BUILTIN_GRAMMARS
            .iter()
            .map(|(n, t)| ((*n).to_string(), (*t).to_string()))
            .collect();
        if let Some(dir) = config_dir {
            read_overrides(&dir.join("agents"), "toml", &mut role_files)?;
            read_overrides(&dir.join("prompts"), "md", &mut prompts)?;
            read_overrides(&dir.join("grammars").join("gbnf"), "gbnf", &mut grammars)?;
        }
        let mut roles = Vec::new();
        for (file, text) in &role_files {
            let role: RoleSpec = toml::from_str(text).map_err(|e| Error::Role {
                name: format!("agents/{file}.toml"),
                message: e.to_string().trim().replace('\n', " "),
            })?;
            roles.push(role);
        }
        let this = Self {
            roles,
            prompts,
            grammars,
        };
        this.check()?;
        Ok(this)
    }

    /// Every role, in file-name order.
    pub fn all(&self) -> &[RoleSpec] {
        &self.roles
    }

    /// The writer: the role named `writer`, else the first of kind writer.
    pub fn writer(&self) -> Result<&RoleSpec> {
        self.roles
            .iter()
            .find(|r| r.kind == RoleKind::Writer && r.name == "writer")
            .or_else(|| self.roles.iter().find(|r| r.kind == RoleKind::Writer))
            .ok_or(Error::NoWriter)
    }

    /// Roles of one kind.
    pub fn of_kind(&self, kind: RoleKind) -> Vec<&RoleSpec> {
        self.roles.iter().filter(|r| r.kind == kind).collect()
    }

    /// A grammar's text.
    pub fn grammar(&self, name: &str) -> Result<&str> {
        self.grammars
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| Error::Role {
                name: name.to_string(),
                message: format!("no grammar grammars/gbnf/{name}.gbnf"),
            })
    }

    /// `name`'s grammar with the rule `rule` as its root (`finish`: a turn's closing calls;
    /// `write`: a `write_file` call), or `None` when the grammar has no such rule. The
    /// orchestrator uses it for a turn's last call and after a call the model repeated, so a turn
    /// ends with what it is for (a review, a written file) instead of running out of steps.
    pub fn closing_grammar(&self, name: &str, rule: &str) -> Result<Option<String>> {
        let text = self.grammar(name)?;
        let defined = format!("{rule} ");
        if !text
            .lines()
            .any(|l| l.starts_with(&defined) && l.contains("::="))
        {
            return Ok(None);
        }
        Ok(root_line(text).map(|root| text.replacen(root, &format!("root ::= {rule}"), 1)))
    }

    /// Renders a prompt template with `ctx` (strict: an undefined variable is an error).
    pub fn render(&self, name: &str, ctx: minijinja::Value) -> Result<String> {
        let source = self.prompts.get(name).ok_or_else(|| Error::Template {
            name: name.to_string(),
            message: format!("there is no prompts/{name}.md"),
        })?;
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_trim_blocks(false);
        env.render_str(source, ctx).map_err(|e| Error::Template {
            name: name.to_string(),
            message: e.to_string(),
        })
    }

    fn check(&self) -> Result<()> {
        let mut names = std::collections::BTreeSet::new();
        for role in &self.roles {
            let fail = |message: String| Error::Role {
                name: role.name.clone(),
                message,
            };
            if !names.insert(role.name.as_str()) {
                return Err(fail("two roles have this name".into()));
            }
            if !self.prompts.contains_key(&role.prompt) {
                return Err(fail(format!(
                    "its prompt prompts/{}.md does not exist",
                    role.prompt
                )));
            }
            let grammar = self.grammar(&role.grammar).map_err(|_| {
                fail(format!(
                    "its grammar grammars/gbnf/{}.gbnf does not exist",
                    role.grammar
                ))
            })?;
            if let Err(e) = writable_set(&role.writable) {
                return Err(fail(format!("a glob in `writable` does not parse: {e}")));
            }
            if grammar.lines().any(|l| l.starts_with("finish ")) && root_line(grammar).is_none() {
                return Err(fail(format!(
                    "its grammar {} has a `finish` rule but no one-line `root` rule",
                    role.grammar
                )));
            }
            if role.max_steps == 0 || role.max_tokens == 0 {
                return Err(fail("max_steps and max_tokens must be at least 1".into()));
            }
            for tool in &role.tools {
                if !TOOL_NAMES.contains(&tool.as_str()) {
                    return Err(fail(format!(
                        "unknown tool `{tool}` (known: {})",
                        TOOL_NAMES.join(", ")
                    )));
                }
                if !grammar.contains(&format!("\\\"{tool}\\\"")) {
                    return Err(fail(format!(
                        "its grammar {} cannot produce the tool `{tool}`",
                        role.grammar
                    )));
                }
            }
            let finisher = match role.kind {
                RoleKind::Reviewer => "review",
                RoleKind::Writer | RoleKind::Tester => "done",
            };
            if !role.tools.iter().any(|t| t == finisher) {
                return Err(fail(format!(
                    "a {:?} role needs the `{finisher}` tool to end its turn",
                    role.kind
                )));
            }
        }
        Ok(())
    }
}

/// The grammar's `root ::= ...` line, when the rule is on one line.
fn root_line(grammar: &str) -> Option<&str> {
    let mut lines = grammar.lines().skip_while(|l| !l.starts_with("root "));
    let root = lines.next()?;
    // A rule continued on the next line starts that line with whitespace.
    match lines.next() {
        Some(next) if next.starts_with([' ', '\t']) && !next.trim().is_empty() => None,
        _ => Some(root),
    }
}

fn read_overrides(dir: &Path, ext: &str, into: &mut BTreeMap<String, String>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(ext) {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).map_err(super::io_err("cannot read", &path))?;
        into.insert(stem.to_string(), text);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_role_parses_and_names_existing_prompts_and_grammars() {
        let roles = Roles::builtin().unwrap();
        assert_eq!(roles.writer().unwrap().name, "writer");
        assert_eq!(roles.of_kind(RoleKind::Reviewer).len(), 1);
        assert_eq!(roles.of_kind(RoleKind::Tester).len(), 1);
        for role in roles.all() {
            let tools: Vec<_> = role
                .tools
                .iter()
                .map(|t| minijinja::context! { name => t, usage => t })
                .collect();
            let text = roles
                .render(
                    &role.prompt,
                    minijinja::context! { round => 2, feedback => "fix it", diff => "+x",
                    changed => vec![minijinja::context! { path => "a.py", text => "x = 1\n" }], fresh => false,
                    test_command => "true", tools => tools, task => "do it", shown => vec!["a.py"],
                    test_files => vec![minijinja::context! { path => "test_a.py", text => "" }],
                    test_path => "test_a.py" },
                )
                .unwrap();
            assert!(!text.contains("{{"), "{text}");
            assert!(
                roles
                    .grammar(&role.grammar)
                    .unwrap()
                    .lines()
                    .any(|l| l.starts_with("root ") && l.contains("::="))
            );
        }
    }

    #[test]
    fn every_data_file_starts_with_a_comment_saying_what_the_code_relies_on() {
        for (name, text) in BUILTIN_ROLES.iter().chain(BUILTIN_GRAMMARS) {
            assert!(text.starts_with('#'), "{name}");
            assert!(text.contains("relies on"), "{name}");
        }
        for (name, text) in BUILTIN_PROMPTS {
            assert!(text.starts_with("{#"), "{name}");
            assert!(text.contains("relies on"), "{name}");
        }
    }

    #[test]
    fn each_builtin_grammar_has_a_one_line_root_and_a_closing_rule() {
        let roles = Roles::builtin().unwrap();
        for role in roles.all() {
            let finish = roles
                .closing_grammar(&role.grammar, "finish")
                .unwrap()
                .unwrap();
            assert!(finish.contains("\nroot ::= finish\n"), "{}", role.name);
            assert!(!finish.contains("root     ::="), "{}", role.name);
            let write = roles.closing_grammar(&role.grammar, "write").unwrap();
            assert_eq!(
                write.is_some(),
                role.tools.iter().any(|t| t == "write_file"),
                "{}",
                role.name
            );
        }
        // A grammar without the rule has no such variant.
        assert_eq!(roles.closing_grammar("full", "finish").unwrap(), None);
    }

    #[test]
    fn the_tester_may_write_test_files_only_and_the_writer_anything() {
        let roles = Roles::builtin().unwrap();
        let tester = &roles.of_kind(RoleKind::Tester)[0];
        for ok in [
            "test_calc.py",
            "tests/test_calc.py",
            "pkg/tests/helpers.py",
            "calc_test.go",
            "src/app.test.ts",
            "src/__tests__/app.js",
            "src/test/java/CalcTest.java",
            "conftest.py",
        ] {
            assert!(tester.may_write(ok).is_ok(), "{ok}");
        }
        for refused in ["calc.py", "src/lib.rs", "testing.md", "latest.py"] {
            let err = tester.may_write(refused).unwrap_err();
            assert!(err.contains(refused) && err.contains("test_*"), "{err}");
        }
        assert!(roles.writer().unwrap().may_write("calc.py").is_ok());
    }

    #[test]
    fn unknown_keys_in_a_role_file_are_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("agents")).unwrap();
        let text = BUILTIN_ROLES[0].1.replace("max_steps", "max_step");
        std::fs::write(dir.path().join("agents/writer.toml"), text).unwrap();
        let err = Roles::load(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("agents/writer.toml"), "{err}");
        assert!(err.contains("max_step"), "{err}");
    }

    #[test]
    fn a_user_role_is_added_and_checked_against_its_grammar() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("agents")).unwrap();
        let security = BUILTIN_ROLES[1]
            .1
            .replace("name = \"reviewer\"", "name = \"security\"");
        std::fs::write(dir.path().join("agents/security.toml"), &security).unwrap();
        let roles = Roles::load(Some(dir.path())).unwrap();
        assert_eq!(roles.of_kind(RoleKind::Reviewer).len(), 2);

        let bad = security.replace("\"review\"]", "\"review\", \"edit\"]");
        std::fs::write(dir.path().join("agents/security.toml"), bad).unwrap();
        let err = Roles::load(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("cannot produce the tool `edit`"), "{err}");

        // A writer given `edit` needs the grammar that produces it.
        std::fs::write(dir.path().join("agents/security.toml"), &security).unwrap();
        let writer = BUILTIN_ROLES[0]
            .1
            .replace("\"write_file\", ", "\"write_file\", \"edit\", ");
        std::fs::write(dir.path().join("agents/writer.toml"), &writer).unwrap();
        let err = Roles::load(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("cannot produce the tool `edit`"), "{err}");
        let writer = writer.replace("grammar = \"writer\"", "grammar = \"full\"");
        std::fs::write(dir.path().join("agents/writer.toml"), writer).unwrap();
        let roles = Roles::load(Some(dir.path())).unwrap();
        assert!(roles.writer().unwrap().tools.iter().any(|t| t == "edit"));
    }
}
