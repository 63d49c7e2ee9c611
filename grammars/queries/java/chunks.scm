; Chunk query for Java: which syntax nodes the chunker (src/index/chunk/syntax.rs) treats as
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

((class_declaration name: (_) @name) @definition.class (#set! label "class {name}"))
((interface_declaration name: (_) @name) @definition.interface (#set! label "interface {name}"))
((enum_declaration name: (_) @name) @definition.enum (#set! label "enum {name}"))
((record_declaration name: (_) @name) @definition.class (#set! label "record {name}"))
((annotation_type_declaration name: (_) @name) @definition.interface (#set! label "@interface {name}"))
((method_declaration name: (_) @name) @definition.method (#set! label "{name}()"))
((constructor_declaration name: (_) @name) @definition.method (#set! label "{name}()"))
((compact_constructor_declaration name: (_) @name) @definition.method (#set! label "{name}()"))
((module_declaration name: (_) @name) @definition.module (#set! label "module {name}"))
