; Chunk query for Rust: which syntax nodes the chunker (src/index/chunk/syntax.rs) treats as
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

(line_comment) @doc
(block_comment) @doc
(attribute_item) @doc

((function_item name: (_) @name) @definition.function (#set! label "fn {name}"))
((function_signature_item name: (_) @name) @definition.function (#set! label "fn {name}"))

; `impl Trait for Type`: the name spans from the trait to the type.
((impl_item trait: (_) @name type: (_) @name) @definition.impl (#set! label "impl {name}"))
((impl_item type: (_) @name) @definition.impl (#set! label "impl {name}"))

((struct_item name: (_) @name) @definition.struct (#set! label "struct {name}"))
((enum_item name: (_) @name) @definition.enum (#set! label "enum {name}"))
((union_item name: (_) @name) @definition.union (#set! label "union {name}"))
((trait_item name: (_) @name) @definition.trait (#set! label "trait {name}"))
((mod_item name: (_) @name) @definition.module (#set! label "mod {name}"))
((foreign_mod_item) @definition.module (#set! label "extern"))
((macro_definition name: (_) @name) @definition.macro (#set! label "macro_rules! {name}"))
((type_item name: (_) @name) @definition.type (#set! label "type {name}"))
((const_item name: (_) @name) @definition.constant (#set! label "const {name}"))
((static_item name: (_) @name) @definition.constant (#set! label "static {name}"))
