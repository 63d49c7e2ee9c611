; Chunk query for TSX (TypeScript with JSX; keep in step with ../typescript/chunks.scm): which syntax nodes the chunker (src/index/chunk/syntax.rs) treats as
; definitions. The code relies only on these capture names and one property:
;   @definition.<kind>  a definition: one chunk per node (large ones split at child boundaries,
;                       keeping a header). <kind> is one of: function method class impl struct
;                       enum union trait interface module type macro constant.
;   @name               the node(s) naming it; with several, the text from the first to the last.
;   @doc                a comment or attribute; it joins the next definition when no blank line
;                       separates them.
;   @wrapper            a node that ends with a definition (decorators, export, template); it is
;                       chunked as that definition, with its prefix kept in the header.
;   (#set! label "kw {name}")  the symbol label; {name} is the @name text. Default: "{name}".
; When several patterns capture the same node, the first pattern in this file wins. A function
; directly inside a class, impl, trait, interface, struct or enum is recorded as a method.

(comment) @doc

; `export` and `export default` stay with what they export.
(export_statement) @wrapper

((function_declaration name: (_) @name) @definition.function (#set! label "function {name}"))
((generator_function_declaration name: (_) @name) @definition.function (#set! label "function* {name}"))
((class_declaration name: (_) @name) @definition.class (#set! label "class {name}"))
((method_definition name: (_) @name) @definition.method (#set! label "{name}()"))

; `const f = () => ...`, `let f = function () ...`, `var f = ...`
((lexical_declaration
  (variable_declarator
    name: (identifier) @name
    value: [(arrow_function) (function_expression) (generator_function)]))
  @definition.function (#set! label "function {name}"))
((variable_declaration
  (variable_declarator
    name: (identifier) @name
    value: [(arrow_function) (function_expression) (generator_function)]))
  @definition.function (#set! label "function {name}"))

; `module.exports.f = function () ...`, `Foo.prototype.bar = () => ...`
((expression_statement
  (assignment_expression
    left: (_) @name
    right: [(arrow_function) (function_expression) (generator_function)]))
  @definition.function (#set! label "function {name}"))

; class fields holding functions: `handle = (e) => { ... }`
((public_field_definition
  name: (_) @name
  value: [(arrow_function) (function_expression)])
  @definition.method (#set! label "{name}()"))

; `declare ...` and `namespace X { }` (parsed inside an expression statement) wrap a definition.
(ambient_declaration) @wrapper
(expression_statement (internal_module)) @wrapper

((abstract_class_declaration name: (_) @name) @definition.class (#set! label "class {name}"))
((interface_declaration name: (_) @name) @definition.interface (#set! label "interface {name}"))
((type_alias_declaration name: (_) @name) @definition.type (#set! label "type {name}"))
((enum_declaration name: (_) @name) @definition.enum (#set! label "enum {name}"))
((internal_module name: (_) @name) @definition.module (#set! label "namespace {name}"))
((module name: (_) @name) @definition.module (#set! label "module {name}"))
((function_signature name: (_) @name) @definition.function (#set! label "function {name}"))
((method_signature name: (_) @name) @definition.method (#set! label "{name}()"))
((abstract_method_signature name: (_) @name) @definition.method (#set! label "{name}()"))
