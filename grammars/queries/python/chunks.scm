; Chunk query for Python: which syntax nodes the chunker (src/index/chunk/syntax.rs) treats as
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

; `@decorator` lines stay with the function or class they decorate.
(decorated_definition) @wrapper

((function_definition name: (_) @name) @definition.function (#set! label "def {name}"))
((class_definition name: (_) @name) @definition.class (#set! label "class {name}"))
