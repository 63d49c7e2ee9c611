; Chunk query for C++: which syntax nodes the chunker (src/index/chunk/syntax.rs) treats as
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

; The function name sits inside its declarator, under up to two pointer levels.
((function_definition
  declarator: (function_declarator declarator: (_) @name))
  @definition.function (#set! label "{name}()"))
((function_definition
  declarator: (pointer_declarator
    declarator: (function_declarator declarator: (_) @name)))
  @definition.function (#set! label "{name}()"))
((function_definition
  declarator: (pointer_declarator
    declarator: (pointer_declarator
      declarator: (function_declarator declarator: (_) @name))))
  @definition.function (#set! label "{name}()"))
((function_definition
  declarator: (reference_declarator
    (function_declarator declarator: (_) @name)))
  @definition.function (#set! label "{name}()"))

; Anything else that defines a function (e.g. a name hidden by a macro) is still one chunk.
(function_definition) @definition.function

((struct_specifier name: (_) @name body: (_)) @definition.struct (#set! label "struct {name}"))
((union_specifier name: (_) @name body: (_)) @definition.union (#set! label "union {name}"))
((enum_specifier name: (_) @name body: (_)) @definition.enum (#set! label "enum {name}"))
((type_definition declarator: (_) @name) @definition.type (#set! label "typedef {name}"))
((preproc_function_def name: (_) @name) @definition.macro (#set! label "#define {name}"))

((class_specifier name: (_) @name body: (_)) @definition.class (#set! label "class {name}"))
((namespace_definition name: (_) @name) @definition.module (#set! label "namespace {name}"))
((namespace_definition) @definition.module (#set! label "namespace"))
((concept_definition name: (_) @name) @definition.type (#set! label "concept {name}"))
((alias_declaration name: (_) @name) @definition.type (#set! label "using {name}"))

; `template <...>` stays with the function or class it declares.
(template_declaration) @wrapper
