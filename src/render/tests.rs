//! Rendering tests: strict mode, helpers, and the hostile-value corpus.

use serde_json::{json, Map, Value as Json};

use super::*;

const NOW: &str = "2026-01-02T03:04:05Z";

fn row(value: Json) -> Map<String, Json> {
    match value {
        Json::Object(map) => map,
        _ => panic!("rows are objects"),
    }
}

fn metadata() -> Metadata {
    Metadata {
        name: "users".into(),
        namespace: "apps".into(),
        uid: "uid-1".into(),
        ..Metadata::default()
    }
}

fn render(template: &str, r: Json) -> Result<Vec<Json>, RowError> {
    RowTemplate::compile(template).unwrap().render(&row(r), &metadata(), NOW)
}

fn render_value(template: &str, v: &str) -> Result<Vec<Json>, RowError> {
    render(template, json!({ "v": v }))
}

const HEADER: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fixed\n";

fn hostile_corpus() -> Vec<String> {
    let mut corpus: Vec<String> = [
        "",
        "plain",
        " leading",
        "trailing ",
        "a: b",
        "key: value\nkind: Secret",
        "- item",
        "-",
        "---",
        "x\n---\nkind: Secret\nmetadata:\n  name: evil",
        "...",
        "\"",
        "\"\nkind: Secret\n\"",
        "'",
        "''",
        "\\",
        "\\\"",
        "\\n",
        "{",
        "}",
        "[",
        "]",
        "{a: 1}",
        "[1, 2]",
        "#",
        "a #comment",
        "# comment",
        "\t",
        "a\tb",
        "\r",
        "\r\n",
        "\n",
        "\n\n",
        "\u{2028}",
        "\u{2029}",
        "\u{85}",
        "&anchor",
        "*alias",
        "!!str",
        "!tag x",
        "|",
        ">",
        "%YAML 1.2",
        "@",
        "`",
        "?",
        "? key",
        ",",
        "null",
        "~",
        "true",
        "false",
        "123",
        "0x1F",
        "1e3",
        ".inf",
        "\u{E000}0\u{E001}",
        "\u{E000}",
        "\u{0}",
        "\u{7f}",
        "\u{feff}",
        "ünïcödé 🚀",
        "key:\n  nested: value",
        "  indented: x",
        "namespace: kube-system",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    corpus.push("long ".repeat(20_000));
    corpus.push(format!("{}\nkind: Secret", "x".repeat(5000)));
    corpus
}

/// The path from the document root to the inserted value and the keys each mapping must have.
struct Context {
    name: &'static str,
    template: String,
    /// Where the value lands, if it lands as a value.
    pointer: Option<&'static str>,
}

fn contexts() -> Vec<Context> {
    let t = |body: &str| format!("{HEADER}{body}");
    vec![
        Context {
            name: "double-quoted",
            template: t("data:\n  key: \"{{Row.v}}\"\n"),
            pointer: Some("/data/key"),
        },
        Context {
            name: "double-quoted prefix",
            template: t("data:\n  key: \"pre-{{Row.v}}-post\"\n"),
            pointer: None,
        },
        Context {
            name: "plain",
            template: t("data:\n  key: {{Row.v}}\n"),
            pointer: Some("/data/key"),
        },
        Context {
            name: "plain prefix",
            template: t("data:\n  key: pre-{{Row.v}}\n"),
            pointer: None,
        },
        Context {
            name: "single-quoted",
            template: t("data:\n  key: '{{Row.v}}'\n"),
            pointer: Some("/data/key"),
        },
        Context { name: "key", template: t("data:\n  {{Row.v}}: x\n"), pointer: None },
        Context {
            name: "flow",
            template: t("data: {key: {{Row.v}}}\n"),
            pointer: Some("/data/key"),
        },
        Context {
            name: "list",
            template: t("data:\n  key: x\nitems:\n- {{Row.v}}\n- fixed\n"),
            pointer: Some("/items/0"),
        },
        Context {
            name: "block literal",
            template: t("data:\n  key: |\n    {{Row.v}}\n"),
            pointer: None,
        },
        Context { name: "comment", template: t("# {{Row.v}}\ndata:\n  key: x\n"), pointer: None },
        Context {
            name: "quote helper",
            template: t("data:\n  key: {{quote Row.v}}\n"),
            pointer: Some("/data/key"),
        },
        Context {
            name: "toJson helper",
            template: t("data:\n  key: {{toJson Row.v}}\n"),
            pointer: Some("/data/key"),
        },
        Context {
            name: "nindent block",
            template: t("data:\n  key: |{{nindent 4 Row.v}}\n"),
            pointer: None,
        },
        Context {
            name: "nindent value",
            template: t("data:\n  key:{{nindent 4 Row.v}}\n"),
            pointer: Some("/data/key"),
        },
        Context {
            name: "squote helper",
            template: t("data:\n  key: {{squote Row.v}}\n"),
            pointer: Some("/data/key"),
        },
    ]
}

/// Keys at every level of a document, as paths; values at leaves are ignored.
fn shape(v: &Json, path: String, out: &mut Vec<String>) {
    match v {
        Json::Object(m) => {
            for (k, child) in m {
                out.push(format!("{path}/{k}"));
                shape(child, format!("{path}/{k}"), out);
            }
        }
        Json::Array(items) => {
            out.push(format!("{path}[{}]", items.len()));
            for (i, child) in items.iter().enumerate() {
                shape(child, format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn hostile_values_never_change_structure() {
    for context in contexts() {
        let benign = render_value(&context.template, "benign").expect(context.name);
        let mut benign_shape = Vec::new();
        shape(&benign[0], String::new(), &mut benign_shape);
        let mut rendered = 0;
        for value in hostile_corpus() {
            let shown: String = value.chars().take(40).collect();
            match render_value(&context.template, &value) {
                Err(_) => {}
                Ok(docs) => {
                    rendered += 1;
                    assert_eq!(
                        docs.len(),
                        1,
                        "{}: {shown:?} changed the document count",
                        context.name
                    );
                    let doc = &docs[0];
                    assert_eq!(doc["kind"], "ConfigMap", "{}: {shown:?}", context.name);
                    assert_eq!(doc["metadata"]["name"], "fixed", "{}: {shown:?}", context.name);
                    assert!(
                        doc["metadata"].get("namespace").is_none(),
                        "{}: {shown:?}",
                        context.name
                    );
                    if context.name != "key" {
                        let mut s = Vec::new();
                        shape(doc, String::new(), &mut s);
                        assert_eq!(
                            s, benign_shape,
                            "{}: {shown:?} changed the shape",
                            context.name
                        );
                    }
                    if let Some(pointer) = context.pointer {
                        let landed = doc.pointer(pointer).unwrap();
                        let as_text = match landed {
                            Json::String(s) => s.clone(),
                            Json::Null => String::new(),
                            other => other.to_string(),
                        };
                        let same = as_text == value
                            || matches!(landed, Json::Null)
                                && ["null", "~"].contains(&value.as_str())
                            || matches!(landed, Json::Number(_) | Json::Bool(_))
                                && serde_yaml::from_str::<Json>(&value).ok().as_ref()
                                    == Some(landed);
                        assert!(same, "{}: {shown:?} landed as {landed}", context.name);
                    }
                }
            }
        }
        // The safe forms must carry every value, not just refuse them.
        if ["double-quoted", "quote helper", "toJson helper"].contains(&context.name) {
            assert_eq!(rendered, hostile_corpus().len(), "{} refused a value", context.name);
        }
    }
}

#[test]
fn strict_mode_names_the_missing_variable() {
    let err =
        render(&format!("{HEADER}data:\n  key: \"{{{{Row.emial}}}}\"\n"), json!({"email": "a@b"}))
            .unwrap_err();
    assert_eq!(err.reason(), "RenderFailed");
    assert!(err.to_string().contains("Row.emial"), "{err}");
}

#[test]
fn helpers_see_missing_and_null_values() {
    let template = format!(
        "{HEADER}data:\n  tier: \"{{{{default Row.meta.tier \"free\"}}}}\"\n  x: \"{{{{#if Row.x}}}}yes{{{{else}}}}no{{{{/if}}}}\"\n  n: \"{{{{Row.n}}}}\"\n"
    );
    for meta in [json!(null), json!({}), json!({"other": 1})] {
        let docs = render(&template, json!({"meta": meta, "n": null})).unwrap();
        assert_eq!(docs[0]["data"], json!({"tier": "free", "x": "no", "n": ""}));
    }
    let docs = render(&template, json!({"meta": {"tier": "gold"}, "x": true, "n": null})).unwrap();
    assert_eq!(docs[0]["data"], json!({"tier": "gold", "x": "yes", "n": ""}));
}

#[test]
fn zero_one_or_many_documents_per_row() {
    let template = "{{#if Row.enabled}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"a-{{Row.id}}\"\n{{#each Row.extra}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"b-{{this}}\"\n{{/each}}{{/if}}\n";
    assert!(render(template, json!({"id": 1, "enabled": false})).unwrap().is_empty());
    assert_eq!(render(template, json!({"id": 1, "enabled": true, "extra": []})).unwrap().len(), 1);
    let docs = render(template, json!({"id": 1, "enabled": true, "extra": ["x", "y"]})).unwrap();
    let names: Vec<_> = docs.iter().map(|d| d["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a-1", "b-x", "b-y"]);
}

#[test]
fn helpers_compute_what_their_names_say() {
    let template = concat!(
        "a: \"{{lower Row.s}}|{{upper Row.s}}|{{title \"hello big world\"}}|{{trim \"  x  \"}}\"\n",
        "b: \"{{trimPrefix Row.s \"He\"}}|{{trimSuffix Row.s \"lo\"}}|{{replace Row.s \"l\" \"L\"}}|{{trunc Row.s 3}}|{{trunc 2 Row.s}}\"\n",
        "c: \"{{coalesce Row.none \"\" \"third\"}}|{{b64enc Row.s}}|{{b64dec \"SGVsbG8=\"}}|{{sha256sum \"abc\"}}\"\n",
        "d: \"{{join Row.list \",\"}}|{{#each (split \"a/b\" \"/\")}}<{{this}}>{{/each}}|{{contains Row.s \"ell\"}}|{{hasPrefix Row.s \"H\"}}|{{hasSuffix Row.s \"x\"}}\"\n",
        "e: \"{{now}}|{{date Row.ts \"%Y/%m/%d\"}}|{{add 2 3}}|{{sub 2 3}}|{{add 1.5 1}}|{{int \"42\"}}|{{float \"1.5\"}}\"\n",
        "f: \"{{dnsLabel \"Hello_World!! 42--\"}}|{{#if (eq Row.n 3)}}three{{/if}}|{{lookup (fromJson Row.json) \"k\"}}\"\n",
        "g: {{toJson Row.list}}\n",
        "h:{{nindent 2 (toYaml Row.obj)}}\n",
    );
    let docs = render(
        template,
        json!({"s": "Hello", "list": ["x", "y"], "ts": "2024-05-06T07:08:09Z", "n": 3, "json": "{\"k\": \"v\"}", "obj": {"a": 1, "b": [true]}, "none": null}),
    )
    .unwrap();
    let d = &docs[0];
    assert_eq!(d["a"], "hello|HELLO|Hello Big World|x");
    assert_eq!(d["b"], "llo|Hel|HeLLo|Hel|He");
    assert_eq!(
        d["c"],
        "third|SGVsbG8=|Hello|ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(d["d"], "x,y|<a><b>|true|true|false");
    assert_eq!(d["e"], "2026-01-02T03:04:05Z|2024/05/06|5|-1|2.5|42|1.5");
    assert_eq!(d["f"], "hello-world-42|three|v");
    assert_eq!(d["g"], json!(["x", "y"]));
    assert_eq!(d["h"], json!({"a": 1, "b": [true]}));
}

#[test]
fn raw_form_is_explicitly_unescaped() {
    let docs =
        render(&format!("{HEADER}data: {{{{{{Row.v}}}}}}\n"), json!({"v": "{a: b}"})).unwrap();
    assert_eq!(docs[0]["data"], json!({"a": "b"}));
}

#[test]
fn bad_templates_and_outputs_give_clear_errors() {
    let err = RowTemplate::compile("{{#if Row.x}}unclosed").unwrap_err();
    assert_eq!(err.reason(), "TemplateInvalid");

    let err = render("key: [unclosed\n", json!({})).unwrap_err();
    assert!(matches!(err, RowError::NotYaml { line: 2, .. }), "{err:?}");
    assert_eq!(err.reason(), "InvalidYaml");

    let err = render_value(&format!("{HEADER}data:\n  key: {{{{Row.v}}}}\n"), "a: b").unwrap_err();
    assert_eq!(err.reason(), "UnsafeValue");
    assert!(!err.to_string().contains("a: b"), "errors never echo row values: {err}");

    let err = render_value(&format!("{HEADER}data:\n  key: {{{{Row.v}}}}\n"), "x #y").unwrap_err();
    assert!(err.to_string().contains("data.key"), "{err}");
}

fn policy_with(kinds: &[&str]) -> ObjectPolicy {
    ObjectPolicy {
        allowed_kinds: kinds.iter().map(|k| k.parse().unwrap()).collect(),
        extra_namespaces: Some(["shared".to_string()].into()),
    }
}

fn validate(doc: Json, policy: &ObjectPolicy) -> Result<RenderedObject, ObjectProblem> {
    validate_object(doc, 0, "apps", policy, &BuiltinScopes)
}

#[test]
fn objects_are_validated_against_the_policy() {
    let policy = policy_with(&["ConfigMap", "Namespace", "apps/Deployment"]);
    let cm = |extra: Json| {
        let mut doc = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ok"}});
        if let Json::Object(m) = extra {
            for (k, v) in m {
                doc["metadata"][k] = v;
            }
        }
        doc
    };
    let object = validate(cm(json!({})), &policy).unwrap();
    assert_eq!(object.namespace.as_deref(), Some("apps"), "defaults to the DBQR's namespace");
    assert_eq!(object.manifest["metadata"]["namespace"], "apps");
    assert!(validate(cm(json!({"namespace": "shared"})), &policy).is_ok());
    let policies = json!({"dbqo.dev/apply": "create-only", "dbqo.dev/prune": "disabled",
                          "dbqo.dev/wave": "-2"});
    assert!(validate(cm(json!({"annotations": policies})), &policy).is_ok());

    let problems = [
        (json!({"kind": "ConfigMap", "metadata": {"name": "x"}}), "InvalidObject"),
        (json!({"apiVersion": "v1", "metadata": {"name": "x"}}), "InvalidObject"),
        (json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}), "InvalidObject"),
        (json!(["not", "a", "mapping"]), "InvalidObject"),
        (
            json!({"apiVersion": "a/b/c", "kind": "ConfigMap", "metadata": {"name": "x"}}),
            "InvalidObject",
        ),
        (
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}),
            "KindNotAllowed",
        ),
        (
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Not_Valid"}}),
            "InvalidName",
        ),
        (cm(json!({"namespace": "kube-system"})), "NamespaceNotAllowed"),
        (cm(json!({"annotations": {"dbqo.dev/apply": "createonly"}})), "InvalidObject"),
        (cm(json!({"annotations": {"dbqo.dev/prune": "false"}})), "InvalidObject"),
        (cm(json!({"annotations": {"dbqo.dev/prune": true}})), "InvalidObject"),
        (cm(json!({"annotations": {"dbqo.dev/wave": 1}})), "InvalidObject"),
        (cm(json!({"annotations": {"dbqo.dev/wave": "first"}})), "InvalidObject"),
        (cm(json!({"annotations": {"dbqo.dev/wave": "1001"}})), "InvalidObject"),
        (
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t", "namespace": "apps"}}),
            "NamespaceNotAllowed",
        ),
        (
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a.b"}}),
            "InvalidName",
        ),
    ];
    for (doc, reason) in problems {
        let err = validate(doc.clone(), &policy).unwrap_err();
        assert_eq!(err.reason(), reason, "{doc} -> {err}");
    }
    let ns = validate(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tenant-a"}}),
        &policy,
    )
    .unwrap();
    assert_eq!(ns.namespace, None, "cluster-scoped kinds get no namespace");
}

#[test]
fn two_rows_producing_one_object_both_fail() {
    let template = RowTemplate::compile(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"cm-{{Row.name}}\"\n",
    )
    .unwrap();
    let rows: Vec<_> = [
        json!({"id": 1, "name": "a"}),
        json!({"id": 2, "name": "b"}),
        json!({"id": 3, "name": "a"}),
    ]
    .into_iter()
    .map(row)
    .collect();
    let outcome =
        render_rows(&template, &rows, &metadata(), NOW, &ObjectPolicy::default(), &BuiltinScopes);
    assert_eq!(outcome.objects.len(), 1);
    assert_eq!(outcome.objects[0].name, "cm-b");
    let failed: Vec<_> = outcome.failures.iter().map(|f| (f.row.index, f.error.reason())).collect();
    assert_eq!(failed, [(0, "DuplicateObject"), (2, "DuplicateObject")]);
    assert_eq!(outcome.failures[0].row.to_string(), "row 0 (id=1)");
}

#[test]
fn rows_left_when_the_pass_render_budget_is_spent_fail() {
    let template = RowTemplate::compile(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"cm-{{Row.name}}\"\n",
    )
    .unwrap();
    let rows: Vec<_> = [json!({"id": 1, "name": "a"}), json!({"id": 2, "name": "b"})]
        .into_iter()
        .map(row)
        .collect();
    let outcome = render_rows_within(
        &template,
        &rows,
        &metadata(),
        NOW,
        &ObjectPolicy::default(),
        &BuiltinScopes,
        std::time::Duration::ZERO,
    );
    assert!(outcome.objects.is_empty());
    let failed: Vec<_> = outcome.failures.iter().map(|f| (f.row.index, f.error.reason())).collect();
    assert_eq!(failed, [(0, "RenderLimitExceeded"), (1, "RenderLimitExceeded")]);
}

#[test]
fn a_structured_value_rendered_directly_fails_the_row_and_names_the_expression() {
    for (value, kind) in
        [(json!({"m4rker": 1}), "a JSON object"), (json!(["m4rker", 2]), "a JSON array")]
    {
        let err =
            render(&format!("{HEADER}data:\n  key: \"{{{{Row.obj}}}}\"\n"), json!({"obj": value}))
                .unwrap_err();
        let message = err.to_string();
        assert_eq!(err.reason(), "RenderFailed");
        assert!(message.contains("{{Row.obj}} is ") && message.contains(kind), "{message}");
        assert!(message.contains("toJson Row.obj"), "{message}");
        assert!(!message.contains("m4rker"), "{message}");
    }
    // The same value through toJson, and the scalars of an array one by one, render.
    let docs = render(
        &format!(
            "{HEADER}data:\n  json: {{{{toJson Row.obj}}}}\n  items: \"{{{{#each Row.arr}}}}{{{{@index}}}}={{{{this}}}};{{{{/each}}}}\"\n  now: \"{{{{now}}}}\"\n"
        ),
        json!({"obj": {"a": 1}, "arr": ["x", 2]}),
    )
    .unwrap();
    assert_eq!(docs[0]["data"]["json"], json!({"a": 1}));
    assert_eq!(docs[0]["data"]["items"], json!("0=x;1=2;"));
}

mod bounds {
    use super::super::limits::{MAX_INDENT, MAX_ITERATIONS, MAX_NESTING};
    use super::super::{Metadata, RowError, RowTemplate};
    use serde_json::json;

    fn render(template: &str, row: serde_json::Value) -> Result<Vec<serde_json::Value>, RowError> {
        let compiled = RowTemplate::compile(template).expect("compiles");
        compiled.render(row.as_object().unwrap(), &Metadata::default(), "2024-01-01T00:00:00Z")
    }

    fn reason(result: Result<Vec<serde_json::Value>, RowError>) -> String {
        let error = result.expect_err("over a bound");
        format!("{}: {error}", error.reason())
    }

    #[test]
    fn a_huge_indent_fails_the_row_without_allocating() {
        let e = reason(render("a: {{indent 100000000000 \"x\"}}\n", json!({})));
        assert!(e.starts_with("RenderLimitExceeded"), "{e}");
        assert!(e.contains(&format!("indent at most {MAX_INDENT} columns")), "{e}");
        let e = reason(render("a: {{nindent Row.n \"x\"}}\n", json!({"n": -9_000_000_000_i64})));
        assert!(e.contains("asks nindent"), "{e}");
    }

    #[test]
    fn replace_cannot_amplify() {
        let row = json!({"s": "a".repeat(2000), "to": "b".repeat(2000)});
        let e = reason(render("a: \"{{replace Row.s \"a\" Row.to}}\"\n", row));
        assert!(e.contains("asks replace"), "{e}");
    }

    #[test]
    fn output_and_inserted_values_are_bounded_per_row() {
        // 600 copies of a 4 KiB value: 2.4 MiB of inserts from a small row.
        let row = json!({"items": vec![0; 600], "big": "v".repeat(4096)});
        let e = reason(render("a: |\n{{#each Row.items}}  {{../Row.big}}\n{{/each}}", row));
        assert!(e.starts_with("RenderLimitExceeded"), "{e}");
        // Template text alone: an each over a long array repeating a long line.
        let line = "x".repeat(100);
        let row = json!({"items": vec![0; 20_000]});
        let e =
            reason(render(&format!("{{{{#each Row.items}}}}# {line}\n{{{{/each}}}}a: 1\n"), row));
        assert!(e.starts_with("RenderLimitExceeded"), "{e}");
    }

    #[test]
    fn nested_loops_with_empty_bodies_are_bounded() {
        let row = json!({"items": vec![0; 2000]});
        let started = std::time::Instant::now();
        let e = reason(render(
            "{{#each Row.items}}{{#each ../Row.items}}{{/each}}{{/each}}a: 1\n",
            row.clone(),
        ));
        assert!(e.contains(&format!("{MAX_ITERATIONS} iterations")), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Below the bound it renders.
        let small = json!({"items": vec![0; 100]});
        assert!(render("{{#each Row.items}}{{#each ../Row.items}}{{/each}}{{/each}}a: 1\n", small)
            .is_ok());
    }

    #[test]
    fn partials_decorators_and_deep_nesting_are_refused_when_compiled() {
        for template in [
            "{{> other}}",
            "{{#> layout}}x{{/layout}}",
            "{{#*inline \"p\"}}{{> p}}{{/inline}}{{> p}}",
            "{{*decorator}}",
        ] {
            let e = RowTemplate::compile(template).expect_err(template);
            assert!(e.to_string().contains("not supported"), "{template}: {e}");
        }
        let deep = "{{#if x}}".repeat(MAX_NESTING + 1) + &"{{/if}}".repeat(MAX_NESTING + 1);
        assert!(RowTemplate::compile(&deep).is_err());
        let very_deep = "{{#if x}}".repeat(200_000);
        assert!(RowTemplate::compile(&very_deep).is_err(), "no stack overflow");
    }
}
