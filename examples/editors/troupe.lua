-- troupe in Neovim (0.11+): the language server for code actions, and the one-shot commands
-- for the current file and selection. Put this file in ~/.config/nvim/lua/ and add
-- `require("troupe")` to init.lua. `troupe` must be on PATH (or set `troupe_bin`).
local troupe_bin = "troupe"

-- 1. The language server: code actions "troupe: explain", "troupe: edit selection" and
--    "troupe: review file" on a visual selection (`vim.lsp.buf.code_action()`, by default
--    `gra`), for every file of a git repository. The server keeps your unsaved buffers, so the
--    model sees what you see (a review reads the saved file). Review findings arrive as
--    diagnostics (`]d`, `vim.diagnostic.open_float()`); a finding's suggestion is a quick fix.
vim.api.nvim_create_autocmd("FileType", {
  callback = function(args)
    local root = vim.fs.root(args.buf, ".git")
    if not root then return end
    vim.lsp.start({
      name = "troupe",
      cmd = { troupe_bin, "lsp" },
      root_dir = root,
      -- The instruction of the "edit selection" code action.
      -- reviewOnSave: review the file's uncommitted change on every :w.
      init_options = {
        editInstruction = "Fix any bugs and make this code clearer.",
        reviewOnSave = false,
      },
    }, { bufnr = args.buf })
  end,
})

-- 2. Explain the selection in a floating window (through the language server).
local function selection_range()
  local s, e = vim.fn.line("v"), vim.fn.line(".")
  if s > e then s, e = e, s end
  return { start = { line = s - 1, character = 0 }, ["end"] = { line = e, character = 0 } }
end

local function troupe_client()
  return vim.lsp.get_clients({ bufnr = 0, name = "troupe" })[1]
end

vim.keymap.set("x", "<leader>te", function()
  local client = troupe_client()
  if not client then return vim.notify("troupe lsp is not running", vim.log.levels.WARN) end
  client:request("workspace/executeCommand", {
    command = "troupe.explain",
    arguments = { { uri = vim.uri_from_bufnr(0), range = selection_range() } },
  }, function(err, result)
    if err then return vim.notify(err.message, vim.log.levels.ERROR) end
    vim.lsp.util.open_floating_preview(vim.split(result.explanation, "\n"), "markdown")
  end, 0)
end, { desc = "troupe: explain selection" })

-- 3. Edit the selection with an instruction you type; the change arrives as a WorkspaceEdit
--    of the selected lines only (undo with `u`).
vim.keymap.set("x", "<leader>ti", function()
  local client = troupe_client()
  if not client then return vim.notify("troupe lsp is not running", vim.log.levels.WARN) end
  local range = selection_range()
  vim.ui.input({ prompt = "troupe edit: " }, function(instruction)
    if not instruction or instruction == "" then return end
    client:request("workspace/executeCommand", {
      command = "troupe.edit",
      arguments = { { uri = vim.uri_from_bufnr(0), range = range, instruction = instruction } },
    }, function(err, result)
      if err then return vim.notify(err.message, vim.log.levels.ERROR) end
      vim.lsp.util.apply_workspace_edit(result.edit, client.offset_encoding)
    end, 0)
  end)
end, { desc = "troupe: edit selection" })

-- 4. Without the language server: the one-shot commands on the current buffer (unsaved text is
--    sent on stdin with --stdin), the diff shown in a scratch buffer.
vim.api.nvim_create_user_command("TroupeDiff", function(opts)
  local file = vim.api.nvim_buf_get_name(0)
  local text = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), "\n") .. "\n"
  local cmd = { troupe_bin, "edit", "--file", file, "--stdin", "--instruction", opts.args }
  if opts.range == 2 then
    vim.list_extend(cmd, { "--range", opts.line1 .. ":" .. opts.line2 })
  end
  vim.system(cmd, { stdin = text, text = true }, vim.schedule_wrap(function(r)
    if r.code ~= 0 then return vim.notify(r.stderr, vim.log.levels.ERROR) end
    vim.cmd("new")
    vim.bo.buftype, vim.bo.filetype = "nofile", "diff"
    vim.api.nvim_buf_set_lines(0, 0, -1, false, vim.split(r.stdout, "\n"))
  end))
end, { nargs = "+", range = true, desc = "troupe edit: show the proposed diff" })

vim.api.nvim_create_user_command("TroupeAsk", function(opts)
  local cmd = { troupe_bin, "ask", opts.args, "--file", vim.api.nvim_buf_get_name(0),
                "--line", tostring(vim.fn.line(".")) }
  vim.system(cmd, { text = true }, vim.schedule_wrap(function(r)
    local out = r.code == 0 and r.stdout or r.stderr
    vim.lsp.util.open_floating_preview(vim.split(out, "\n"), "markdown")
  end))
end, { nargs = "+", desc = "troupe ask about the code at the cursor" })
