-- Drives examples/editors/troupe.lua in a real Neovim, headless, as a user would: opens
-- $TRIAL_FILE (the example starts `troupe lsp` for it), lists the code actions, explains the
-- first three lines with the example's mapping, asks a question with :TroupeAsk, edits the
-- selection with the mapping (the instruction typed into vim.ui.input), undoes it, and shows a
-- :TroupeDiff. Writes what it saw to $TRIAL_OUT as JSON after every step, then quits; every
-- wait is bounded. tests/neovim.rs checks the result.
local out = { steps = {} }
local function save()
  local f = assert(io.open(vim.env.TRIAL_OUT, "w"))
  f:write(vim.json.encode(out))
  f:close()
end
local function step(name, value) out[name] = value; table.insert(out.steps, name); save() end

local function floats()
  local lines = {}
  for _, w in ipairs(vim.api.nvim_list_wins()) do
    if vim.api.nvim_win_get_config(w).relative ~= "" then
      local b = vim.api.nvim_win_get_buf(w)
      table.insert(lines, table.concat(vim.api.nvim_buf_get_lines(b, 0, -1, false), "\n"))
    end
  end
  return lines
end
local function close_floats()
  for _, w in ipairs(vim.api.nvim_list_wins()) do
    if vim.api.nvim_win_get_config(w).relative ~= "" then vim.api.nvim_win_close(w, true) end
  end
end

local ok, err = pcall(function()
  vim.cmd.edit(vim.env.TRIAL_FILE)
  step("attached", vim.wait(30000, function()
    return #vim.lsp.get_clients({ bufnr = 0, name = "troupe" }) > 0
  end, 50))
  local client = vim.lsp.get_clients({ bufnr = 0, name = "troupe" })[1]
  local r = client:request_sync("textDocument/codeAction", {
    textDocument = { uri = vim.uri_from_bufnr(0) },
    range = { start = { line = 0, character = 0 }, ["end"] = { line = 3, character = 0 } },
    context = { diagnostics = {} },
  }, 30000, 0)
  local titles = {}
  for _, a in ipairs((r and r.result) or {}) do table.insert(titles, a.title) end
  step("code_actions", titles)

  -- The example's mapping: select lines 1-3, <leader>te, wait for the floating window.
  vim.api.nvim_feedkeys(vim.keycode("ggVjj<leader>te<Esc>"), "mx", false)
  vim.wait(120000, function() return #floats() > 0 end, 100)
  step("explain_float", floats())
  close_floats()

  -- The example's :TroupeAsk (a one-shot `troupe ask`, through the running server's socket).
  vim.cmd("TroupeAsk what does add_cents return?")
  vim.wait(120000, function() return #floats() > 0 end, 100)
  step("ask_float", floats())
  close_floats()

  -- The example's edit mapping: the instruction comes from vim.ui.input (answered here as a
  -- user would type it); the answer is applied to the buffer as a WorkspaceEdit.
  local before = vim.api.nvim_buf_get_lines(0, 0, -1, false)
  vim.ui.input = function(_, on_confirm) on_confirm("Add type hints to the parameters.") end
  local tick = vim.api.nvim_buf_get_changedtick(0)
  vim.api.nvim_feedkeys(vim.keycode("ggVjj<leader>ti<Esc>"), "mx", false)
  vim.wait(120000, function() return vim.api.nvim_buf_get_changedtick(0) ~= tick end, 100)
  step("edit_before", before)
  step("edit_after", vim.api.nvim_buf_get_lines(0, 0, -1, false))
  vim.cmd("silent! undo")
  step("after_undo", vim.api.nvim_buf_get_lines(0, 0, -1, false))

  -- :TroupeDiff (one-shot `troupe edit --stdin` of the unsaved buffer): a scratch diff buffer.
  local wins = #vim.api.nvim_list_wins()
  vim.cmd("1,3TroupeDiff Rename the parameters to x and y.")
  vim.wait(120000, function() return #vim.api.nvim_list_wins() > wins end, 100)
  step("diff_filetype", vim.bo.filetype)
  step("diff_buffer", vim.api.nvim_buf_get_lines(0, 0, -1, false))
end)
if not ok then step("error", tostring(err)) end
save()
vim.cmd("qa!")
