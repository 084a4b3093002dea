-- Rules of the test rspamd (tests/e2e/test_content_spam.py): scores a
-- test can choose, so a message gets a known score without rspamd's
-- statistics, network lists or Redis.

-- A text part with "postern-test-score=N" scores N.
rspamd_config:register_symbol({
  name = 'POSTERN_TEST_SCORE',
  score = 1.0,
  callback = function(task)
    for _, part in ipairs(task:get_text_parts() or {}) do
      local text = tostring(part:get_content() or '')
      local n = string.match(text, 'postern%-test%-score=(%-?%d+%.?%d*)')
      if n then
        task:insert_result('POSTERN_TEST_SCORE', tonumber(n), n)
        return
      end
    end
  end,
})

-- A text part with "postern-test-envelope" scores the number of SMTP
-- recipients rspamd was told of (the Rcpt request headers), when the
-- client address, HELO name and envelope sender it was told are the
-- ones the test used; 100 when any differs.
rspamd_config:register_symbol({
  name = 'POSTERN_TEST_ENVELOPE',
  score = 1.0,
  callback = function(task)
    local marked = false
    for _, part in ipairs(task:get_text_parts() or {}) do
      if string.find(tostring(part:get_content() or ''), 'postern-test-envelope', 1, true) then
        marked = true
      end
    end
    if not marked then
      return
    end
    local ip = task:get_from_ip()
    local from = task:get_from('smtp')
    local rcpts = task:get_recipients('smtp') or {}
    local same = ip and ip:is_valid() and tostring(ip) == '127.0.0.1'
      and task:get_helo() == 'mta.sender.test'
      and from and from[1] and from[1].addr == 'envelope@sender.test'
    if same then
      task:insert_result('POSTERN_TEST_ENVELOPE', #rcpts)
    else
      task:insert_result('POSTERN_TEST_ENVELOPE', 100)
    end
  end,
})
