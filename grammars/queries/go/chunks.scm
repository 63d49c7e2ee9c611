; Chunk query for Go: which syntax nodes the chunker (src/index/chunk/syntax.rs) treats as
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

; `type Foo struct { ... }` is a type_declaration holding one type_spec; a grouped
; `type ( ... )` ends with `)`, so it is not a wrapper and is split into its specs when large.
(type_declaration) @wrapper

((function_declaration name: (_) @name) @definition.function (#set! label "func {name}"))
; `func (s *Server) Handle`: the name spans from the receiver to the method name.
((method_declaration receiver: (_) @name name: (_) @name) @definition.method (#set! label "func {name}"))
((type_spec name: (_) @name type: (struct_type)) @definition.struct (#set! label "type {name}"))
((type_spec name: (_) @name type: (interface_type)) @definition.interface (#set! label "type {name}"))
((type_spec name: (_) @name) @definition.type (#set! label "type {name}"))
((type_alias name: (_) @name) @definition.type (#set! label "type {name}"))
