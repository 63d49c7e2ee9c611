//! `troupe review`: runs a review through the session and prints its report as text, markdown
//! (for a pull-request comment), JSON, SARIF 2.1.0 or GitHub workflow annotations.
//!
//! Every format is a pure function of the [`ReviewReport`], which holds no timings: the same
//! inputs give the same bytes. Progress and timings go to stderr. When a `troupe lsp` of the
//! repository runs, the review runs there (its model is loaded already) through
//! [`crate::editor::Link`]; the report comes back as the same protocol event, so the output is
//! the one an in-process review prints.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::agents::review::{CATEGORIES, verdict};
use crate::commands::{Context, exit};
use crate::config::FailOn;
use crate::editor::Link;
use crate::protocol::{
    CoverageStatus, EventMsg, Finding, Op, ReviewHead, ReviewReport, ReviewSpec, Severity,
    Submission,
};

/// Output formats of `troupe review`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Markdown,
    Json,
    Sarif,
    Github,
}

/// What `troupe review` was asked.
#[derive(Debug, Clone)]
pub struct ReviewArgs {
    pub base: Option<String>,
    pub head: ReviewHead,
    pub format: Option<Format>,
    pub fail_on: Option<FailOn>,
    pub min_coverage: Option<f64>,
    pub output: Option<PathBuf>,
    /// More outputs of the same report: `(format, file)`.
    pub also: Vec<(Format, PathBuf)>,
}

/// Parses `FORMAT:FILE` (for `--also`).
pub fn parse_also(s: &str) -> Result<(Format, PathBuf), String> {
    use clap::ValueEnum;
    let (format, file) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not FORMAT:FILE (e.g. sarif:troupe.sarif)"))?;
    let format = Format::from_str(format, true).map_err(|_| {
        format!("unknown format `{format}` in `{s}`; use text, markdown, json, sarif or github")
    })?;
    if file.is_empty() {
        return Err(format!("`{s}` names no file"));
    }
    Ok((format, PathBuf::from(file)))
}

/// `troupe review`: exit 0 when nothing reaches `--fail-on` and coverage suffices, 1 otherwise.
pub fn run(ctx: &Context, args: &ReviewArgs) -> anyhow::Result<u8> {
    let Some(repo) = ctx.repo.clone() else {
        bail!(
            "{}",
            ctx.repo_error
                .clone()
                .unwrap_or_else(|| "not inside a git repository".into())
        );
    };
    let config = &ctx.config.config;
    let fail_on = args.fail_on.unwrap_or(config.review.fail_on);
    let min_coverage = args.min_coverage.unwrap_or(config.review.min_coverage);
    if !(0.0..=1.0).contains(&min_coverage) {
        bail!(
            "--min-coverage must be between 0 and 1 (a fraction of changed lines), got {min_coverage}"
        );
    }
    let format = args
        .format
        .unwrap_or(if ctx.json { Format::Json } else { Format::Text });
    for out in args.output.iter().chain(args.also.iter().map(|(_, f)| f)) {
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            bail!(
                "cannot write {}: the directory {} does not exist",
                out.display(),
                parent.display()
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let spec = ReviewSpec {
        base: args.base.clone(),
        head: args.head.clone(),
        paths: Vec::new(),
    };
    let started = Instant::now();
    let report = runtime.block_on(async {
        let submission = Submission {
            id: "review".into(),
            op: Op::Review { spec },
        };
        // A running `troupe lsp` of the repository reviews with its loaded model; the report
        // (and so every format) comes back the same as from a session of this process.
        let mut link = Link::open(&repo, config, &submission, !ctx.no_instance).await?;
        if link.is_remote() {
            eprintln!("review: sent to the running troupe instance of this repository (troupe lsp, troupe serve or the terminal UI)");
        }
        let mut err = std::io::stderr();
        loop {
            let Some(event) = link
                .next_event(Duration::from_secs(3 * 3600))
                .await
                .context("the review made no progress")?
            else {
                bail!("the session ended before the review was complete");
            };
            match event.msg {
                EventMsg::ReviewStarted {
                    files,
                    hunks,
                    requests,
                } => {
                    let _ = writeln!(
                        err,
                        "review: {files} changed files, {hunks} hunks, {requests} model requests"
                    );
                }
                EventMsg::ReviewProgress { done, total } => {
                    let _ = writeln!(err, "review: {done}/{total} requests answered");
                }
                EventMsg::ReviewComplete { report } => {
                    link.finish();
                    return Ok(*report);
                }
                EventMsg::Error { message, fix } => match fix {
                    Some(fix) => bail!("{message}\nfix: {fix}"),
                    None => bail!("{message}"),
                },
                EventMsg::Warning { message } => {
                    let _ = writeln!(err, "warning: {message}");
                }
                _ => {}
            }
        }
    })?;
    eprintln!(
        "review: done in {:.1} s; {} findings; {}/{} hunks reviewed ({:.1}% of changed lines)",
        started.elapsed().as_secs_f64(),
        report.findings.len(),
        report.coverage.hunks_reviewed,
        report.coverage.hunks,
        report.coverage.ratio * 100.0
    );
    for (format, path) in &args.also {
        write_atomically(path, render(&report, *format).as_bytes())?;
    }
    let text = render(&report, format);
    match &args.output {
        Some(path) => write_atomically(path, text.as_bytes())?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(match verdict(&report, fail_on, min_coverage) {
        Some(why) => {
            eprintln!("review: failing: {why}");
            exit::NEGATIVE
        }
        None => exit::OK,
    })
}

/// Writes through a temporary file in the same directory, so a reader never sees half a report.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The report in `format`.
pub fn render(report: &ReviewReport, format: Format) -> String {
    match format {
        Format::Text => text(report),
        Format::Markdown => markdown(report),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(report).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Sarif => {
            let mut s = serde_json::to_string_pretty(&sarif(report)).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Github => github(report),
    }
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
    }
}

fn status_name(s: CoverageStatus) -> &'static str {
    match s {
        CoverageStatus::Reviewed => "reviewed",
        CoverageStatus::Clipped => "clipped",
        CoverageStatus::Skipped => "skipped",
    }
}

fn lines(f: &Finding) -> String {
    if f.start_line == f.end_line {
        format!("{}", f.start_line)
    } else {
        format!("{}-{}", f.start_line, f.end_line)
    }
}

fn coverage_line(report: &ReviewReport) -> String {
    let c = &report.coverage;
    format!(
        "{} of {} hunks reviewed, {} of {} changed lines ({:.1}%)",
        c.hunks_reviewed,
        c.hunks,
        c.changed_lines_reviewed,
        c.changed_lines,
        c.ratio * 100.0
    )
}

/// `skipped PATH: reason` for each file not wholly reviewed.
fn not_reviewed(report: &ReviewReport) -> impl Iterator<Item = String> + '_ {
    report
        .coverage
        .files
        .iter()
        .filter(|f| f.status != CoverageStatus::Reviewed)
        .map(|f| {
            format!(
                "{} {}: {}",
                status_name(f.status),
                f.path,
                f.reason.as_deref().unwrap_or("")
            )
        })
}

fn provenance_line(report: &ReviewReport) -> String {
    let p = &report.provenance;
    let short = |s: &str| s.get(..12).unwrap_or(s).to_string();
    format!(
        "troupe {} · model {} (sha256 {}) · prompt {} · index {} · base {} · head {} · diff {}",
        p.troupe_version,
        p.model,
        p.model_sha256.as_deref().map_or("unknown".into(), short),
        short(&p.prompt_sha256),
        p.index_state,
        short(&p.base_commit),
        short(&p.head),
        short(&p.diff_sha256),
    )
}

fn text(report: &ReviewReport) -> String {
    let mut out = String::new();
    for f in &report.findings {
        let _ = writeln!(
            out,
            "{}:{}: {} [{}] {} (confidence {:.2})",
            f.file,
            lines(f),
            severity_name(f.severity),
            f.category,
            f.title,
            f.confidence
        );
        for l in f.explanation.lines() {
            let _ = writeln!(out, "    {l}");
        }
        if let Some(s) = &f.suggestion {
            let _ = writeln!(out, "    suggested replacement:");
            for l in s.lines() {
                let _ = writeln!(out, "      {l}");
            }
        }
    }
    if !report.findings.is_empty() {
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "{} finding{}; {}",
        report.findings.len(),
        if report.findings.len() == 1 { "" } else { "s" },
        coverage_line(report)
    );
    for line in not_reviewed(report) {
        let _ = writeln!(out, "  {line}");
    }
    if report.findings_dropped > 0 {
        let _ = writeln!(
            out,
            "  {} finding(s) outside the change were dropped",
            report.findings_dropped
        );
    }
    if report.answers_cut > 0 {
        let _ = writeln!(
            out,
            "  {} answer(s) cut at review.max_tokens; their complete findings are kept",
            report.answers_cut
        );
    }
    let _ = writeln!(out, "{}", provenance_line(report));
    out
}

/// Escapes text for a markdown table cell or inline text.
fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '|' => out.push_str("\\|"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn markdown(report: &ReviewReport) -> String {
    let mut out = String::from("## troupe review\n\n");
    let n = report.findings.len();
    let mut counts = Vec::new();
    for s in [
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Info,
    ] {
        let k = report.findings.iter().filter(|f| f.severity == s).count();
        if k > 0 {
            counts.push(format!("{k} {}", severity_name(s)));
        }
    }
    let _ = writeln!(
        out,
        "**{n} finding{}**{} · {}\n",
        if n == 1 { "" } else { "s" },
        if counts.is_empty() {
            String::new()
        } else {
            format!(" ({})", counts.join(", "))
        },
        coverage_line(report)
    );
    if n > 0 {
        out.push_str("| severity | location | finding |\n|---|---|---|\n");
        for f in &report.findings {
            let _ = writeln!(
                out,
                "| {} | `{}:{}` | **{}** ({}, confidence {:.2}): {} |",
                severity_name(f.severity),
                md(&f.file).replace('`', "'"),
                lines(f),
                md(&f.title),
                md(&f.category),
                f.confidence,
                md(&f.explanation)
            );
        }
        out.push('\n');
        let suggestions: Vec<&Finding> = report
            .findings
            .iter()
            .filter(|f| f.suggestion.is_some())
            .collect();
        if !suggestions.is_empty() {
            out.push_str("<details><summary>Suggested replacements</summary>\n\n");
            for f in suggestions {
                let s = f.suggestion.as_deref().unwrap_or("");
                let fence = crate::agents::review::fence(s);
                let _ = writeln!(
                    out,
                    "`{}:{}` {}\n\n{fence}\n{s}\n{fence}\n",
                    md(&f.file).replace('`', "'"),
                    lines(f),
                    md(&f.title)
                );
            }
            out.push_str("</details>\n\n");
        }
    }
    out.push_str("<details><summary>Coverage</summary>\n\n| file | status | hunks | changed lines | note |\n|---|---|---|---|---|\n");
    for f in &report.coverage.files {
        let _ = writeln!(
            out,
            "| `{}` | {} | {}/{} | {}/{} | {} |",
            md(&f.path).replace('`', "'"),
            status_name(f.status),
            f.hunks_reviewed,
            f.hunks,
            f.changed_lines_reviewed,
            f.changed_lines,
            md(f.reason.as_deref().unwrap_or(""))
        );
    }
    if report.findings_dropped > 0 {
        let _ = writeln!(
            out,
            "\n{} finding(s) outside the change were dropped.",
            report.findings_dropped
        );
    }
    out.push_str("\n</details>\n\n");
    let _ = writeln!(out, "<sub>{}</sub>", md(&provenance_line(report)));
    out
}

/// Escapes the message part of a workflow command.
fn gh_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a property value of a workflow command.
fn gh_prop(s: &str) -> String {
    gh_data(s).replace(':', "%3A").replace(',', "%2C")
}

fn github(report: &ReviewReport) -> String {
    let mut out = String::new();
    for f in &report.findings {
        let level = match f.severity {
            Severity::High => "error",
            Severity::Medium => "warning",
            Severity::Low | Severity::Info => "notice",
        };
        let mut message = f.explanation.clone();
        if let Some(s) = &f.suggestion {
            message.push_str("\n\nSuggested replacement:\n");
            message.push_str(s);
        }
        let _ = writeln!(
            out,
            "::{level} file={},line={},endLine={},title={}::{}",
            gh_prop(&f.file),
            f.start_line,
            f.end_line,
            gh_prop(&format!(
                "troupe [{}/{}] {}",
                severity_name(f.severity),
                f.category,
                f.title
            )),
            gh_data(&message)
        );
    }
    let mut summary = format!(
        "{} findings; {}",
        report.findings.len(),
        coverage_line(report)
    );
    for line in not_reviewed(report) {
        summary.push('\n');
        summary.push_str(&line);
    }
    summary.push('\n');
    summary.push_str(&provenance_line(report));
    let _ = writeln!(
        out,
        "::notice title={}::{}",
        gh_prop("troupe review"),
        gh_data(&summary)
    );
    out
}

/// The SARIF level of a severity.
fn sarif_level(s: Severity) -> &'static str {
    match s {
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "note",
    }
}

fn rule_id(category: &str) -> String {
    format!("troupe/{category}")
}

/// A SARIF 2.1.0 log of the report.
pub fn sarif(report: &ReviewReport) -> serde_json::Value {
    use sha2::{Digest, Sha256};
    let mut used: Vec<&str> = report
        .findings
        .iter()
        .map(|f| f.category.as_str())
        .collect();
    used.sort_by_key(|c| {
        (
            CATEGORIES.iter().position(|k| k == c).unwrap_or(usize::MAX),
            *c,
        )
    });
    used.dedup();
    let rules: Vec<serde_json::Value> = used
        .iter()
        .map(|c| {
            json!({
                "id": rule_id(c),
                "name": c,
                "shortDescription": {"text": format!("{c} issue found by review")},
                "defaultConfiguration": {"level": "warning"},
            })
        })
        .collect();
    let results: Vec<serde_json::Value> = report
        .findings
        .iter()
        .map(|f| {
            let location = json!({
                "uri": f.file,
                "uriBaseId": "%SRCROOT%",
            });
            let region = json!({"startLine": f.start_line, "endLine": f.end_line});
            let fingerprint = hex::encode(Sha256::digest(
                format!("{}\0{}\0{}", f.file, f.category, f.title).as_bytes(),
            ));
            let mut r = json!({
                "ruleId": rule_id(&f.category),
                "ruleIndex": used.iter().position(|c| *c == f.category).unwrap_or(0),
                "level": sarif_level(f.severity),
                "message": {"text": format!("{}: {}", f.title, f.explanation)},
                "locations": [{"physicalLocation": {
                    "artifactLocation": location,
                    "region": region,
                }}],
                "partialFingerprints": {"troupeFinding/v1": fingerprint},
                "properties": {
                    "severity": severity_name(f.severity),
                    "category": f.category,
                    "confidence": f.confidence,
                },
            });
            if let Some(s) = &f.suggestion {
                r["fixes"] = json!([{
                    "description": {"text": "suggested replacement"},
                    "artifactChanges": [{
                        "artifactLocation": location,
                        "replacements": [{
                            "deletedRegion": region,
                            "insertedContent": {"text": s},
                        }],
                    }],
                }]);
            }
            r
        })
        .collect();
    let artifacts: Vec<serde_json::Value> = report
        .coverage
        .files
        .iter()
        .map(|f| {
            json!({
                "location": {"uri": f.path, "uriBaseId": "%SRCROOT%"},
                "properties": {
                    "review": status_name(f.status),
                    "reason": f.reason,
                    "hunks": f.hunks,
                    "hunksReviewed": f.hunks_reviewed,
                    "changedLines": f.changed_lines,
                    "changedLinesReviewed": f.changed_lines_reviewed,
                },
            })
        })
        .collect();
    let p = &report.provenance;
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "troupe",
                "version": p.troupe_version,
                "semanticVersion": p.troupe_version,
                "rules": rules,
            }},
            "artifacts": artifacts,
            "results": results,
            "columnKind": "unicodeCodePoints",
            "properties": {
                "provenance": p,
                "coverage": {
                    "hunks": report.coverage.hunks,
                    "hunksReviewed": report.coverage.hunks_reviewed,
                    "changedLines": report.coverage.changed_lines,
                    "changedLinesReviewed": report.coverage.changed_lines_reviewed,
                    "ratio": report.coverage.ratio,
                },
                "findingsDropped": report.findings_dropped,
                "answersCut": report.answers_cut,
            },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Coverage, FileCoverage, Provenance};

    pub(crate) fn sample() -> ReviewReport {
        ReviewReport {
            provenance: Provenance {
                troupe_version: "0.1.0".into(),
                model: "m.gguf".into(),
                model_sha256: Some("ab".repeat(32)),
                prompt_sha256: "cd".repeat(32),
                index_state: "none".into(),
                base_commit: "ef".repeat(20),
                head: "worktree".into(),
                diff_sha256: "01".repeat(32),
            },
            coverage: Coverage {
                files: vec![
                    FileCoverage {
                        path: "src/a|b.rs".into(),
                        status: CoverageStatus::Reviewed,
                        reason: None,
                        hunks: 1,
                        hunks_reviewed: 1,
                        changed_lines: 4,
                        changed_lines_reviewed: 4,
                    },
                    FileCoverage {
                        path: "img.png".into(),
                        status: CoverageStatus::Skipped,
                        reason: Some("binary file".into()),
                        hunks: 1,
                        hunks_reviewed: 0,
                        changed_lines: 0,
                        changed_lines_reviewed: 0,
                    },
                ],
                hunks: 2,
                hunks_reviewed: 1,
                changed_lines: 4,
                changed_lines_reviewed: 4,
                ratio: 1.0,
            },
            findings: vec![Finding {
                file: "src/a|b.rs".into(),
                start_line: 3,
                end_line: 4,
                severity: Severity::High,
                category: "bug".into(),
                title: "off, by: one".into(),
                explanation: "100% wrong\nwhen empty".into(),
                suggestion: Some("for i in 0..=n {".into()),
                confidence: 0.75,
            }],
            findings_dropped: 1,
            answers_cut: 0,
        }
    }

    #[test]
    fn github_annotations_escape_properties_and_data() {
        let out = github(&sample());
        let first = out.lines().next().unwrap();
        assert!(
            first.starts_with("::error file=src/a|b.rs,line=3,endLine=4,title=troupe [high/bug] off%2C by%3A one::100%25 wrong%0Awhen empty"),
            "{first}"
        );
        assert_eq!(out.lines().count(), 2, "one line per annotation: {out}");
        assert!(
            out.lines()
                .last()
                .unwrap()
                .contains("skipped img.png: binary file")
        );
    }

    #[test]
    fn markdown_escapes_table_cells_and_lists_coverage() {
        let out = markdown(&sample());
        assert!(out.contains("**1 finding** (1 high)"), "{out}");
        assert!(out.contains("`src/a\\|b.rs:3-4`"), "{out}");
        assert!(out.contains("100% wrong when empty"), "{out}");
        assert!(
            out.contains("| `img.png` | skipped | 0/1 | 0/0 | binary file |"),
            "{out}"
        );
        assert!(out.contains("```\nfor i in 0..=n {\n```"), "{out}");
    }

    #[test]
    fn text_names_findings_skips_and_provenance() {
        let out = text(&sample());
        assert!(
            out.starts_with("src/a|b.rs:3-4: high [bug] off, by: one"),
            "{out}"
        );
        assert!(out.contains("skipped img.png: binary file"));
        assert!(out.contains("1 finding(s) outside the change were dropped"));
        assert!(out.contains("troupe 0.1.0 · model m.gguf (sha256 abababababab)"));
    }

    #[test]
    fn sarif_has_rules_results_fixes_and_provenance() {
        let v = sarif(&sample());
        assert_eq!(v["version"], "2.1.0");
        let run = &v["runs"][0];
        assert_eq!(run["tool"]["driver"]["rules"][0]["id"], "troupe/bug");
        let r = &run["results"][0];
        assert_eq!(r["level"], "error");
        assert_eq!(r["ruleIndex"], 0);
        assert_eq!(
            r["locations"][0]["physicalLocation"]["region"]["startLine"],
            3
        );
        assert_eq!(
            r["fixes"][0]["artifactChanges"][0]["replacements"][0]["insertedContent"]["text"],
            "for i in 0..=n {"
        );
        assert_eq!(run["properties"]["provenance"]["head"], "worktree");
        assert_eq!(run["artifacts"][1]["properties"]["reason"], "binary file");
    }

    #[test]
    fn every_format_is_a_pure_function_of_the_report() {
        for format in [
            Format::Text,
            Format::Markdown,
            Format::Json,
            Format::Sarif,
            Format::Github,
        ] {
            assert_eq!(render(&sample(), format), render(&sample(), format));
        }
        let json: ReviewReport = serde_json::from_str(&render(&sample(), Format::Json)).unwrap();
        assert_eq!(json, sample());
    }
}
