"""Text pools for the sample dataset (written for this project; see make_sample.py).

Japanese article excerpts with titles, English instructions and answers, Chinese
arithmetic templates, and the fixed texts of the planted defects.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------
# Japanese: article excerpts and titles, by topic. Each topic's keywords feed the planted
# tag-list replies (`自己紹介｜子育て｜ワーママ｜30代`).
# ---------------------------------------------------------------------------------------

JA_SYSTEM = [
    "あなたは記事のタイトルを考える編集者です。",
    "あなたはWebメディアの編集者です。記事の内容に合った、読みたくなるタイトルを一つだけ提案してください。",
    "あなたは文章の要点をつかむのが得意な編集アシスタントです。",
]

JA_ASK = [
    "次の記事の冒頭を読んで、タイトルを一つ考えてください。",
    "以下の文章に合うタイトルを付けてください。",
    "この記事にぴったりのタイトルをお願いします。",
    "次の文章を読んで、記事のタイトルを一つだけ提案してください。",
    "ブログ記事のタイトルを考えています。本文の書き出しは次のとおりです。",
]

JA_TOPICS: dict[str, dict] = {
    "子育て": {
        "keywords": ["子育て", "育児", "ワーママ", "保育園", "寝かしつけ", "離乳食", "30代",
                     "自己紹介", "共働き", "絵本", "知育"],
        "entries": [
            ("4月から息子が保育園に通い始めました。最初の1週間は毎朝泣いて、私も職場に向かう電車で涙をこらえていました。それが今では、先生に手を振って自分から部屋に入っていきます。",
             "保育園の慣らし保育、泣いていた息子が笑顔で登園するまで"),
            ("寝かしつけに毎晩1時間以上かかっていました。部屋の照明を夕食後から少し暗くし、お風呂の時間を30分早めただけで、20分ほどで眠るようになりました。",
             "寝かしつけが1時間から20分に縮んだ、夜の過ごし方の工夫"),
            ("離乳食づくりは、週末にまとめて下ごしらえをするようにしています。野菜をゆでて小分けに冷凍しておけば、平日は温めて組み合わせるだけです。",
             "平日がぐっと楽になる、離乳食の週末まとめ作り"),
            ("共働きの我が家では、朝の支度をどちらが担当するかでよくもめていました。そこで家事を書き出して、担当と時間を見える形にしました。話し合いが減り、朝の空気がやわらいだように感じます。",
             "共働き夫婦の朝のもめごとを減らした家事の見える化"),
            ("3歳の娘は、最近なんでも自分でやりたがります。靴をはくのに5分かかっても、手を出さずに待つようにしました。できたときのうれしそうな顔を見ると、待ってよかったと思えます。",
             "「自分でやりたい」3歳の娘を待つと決めた理由"),
            ("絵本の読み聞かせを寝る前の習慣にして半年になります。同じ本を何度も読んでとせがまれますが、繰り返しの中で言葉を覚えていくようです。",
             "寝る前の絵本の時間が、娘の言葉を育ててくれた"),
            ("育休から復帰して3か月がたちました。時短勤務でも仕事量はあまり変わらず、帰りの時間が気になって焦る日が続いています。同じ立場の同僚と話すことで、少し気持ちが軽くなりました。",
             "育休明けの時短勤務、3か月目に感じた焦りと支え"),
            ("子どもの習い事を選ぶとき、本人がやりたいかどうかを一番大事にしました。体験教室をいくつか回ったところ、息子が自分から続けたいと言ったのはスイミングでした。",
             "習い事選びで迷ったら、まず体験教室に行ってみよう"),
            ("雨の日の週末は、家の中で過ごす時間が長くなります。段ボールで秘密基地を作ったり、新聞紙をちぎって遊んだりと、身近なもので意外と盛り上がります。",
             "雨の週末も退屈しない、家にあるもので楽しむ室内遊び"),
            ("兄弟げんかが始まると、以前はすぐに止めに入っていました。最近は危なくない限り少し様子を見て、落ち着いてから二人の話を順番に聞くようにしています。",
             "兄弟げんかにすぐ口を出さない、見守りの練習"),
            ("小学校に入ってから、娘の宿題を見る時間が毎日の課題になりました。リビングの机で一緒に座り、私も本を読むようにしたところ、自分から机に向かう日が増えました。",
             "小学1年生の宿題習慣は、親が隣で本を読むことから"),
            ("子どもの熱で急に仕事を休む日は、どうしても後ろめたさを感じます。上司に早めに伝える、引き継ぎのメモを普段から残すなど、できることを決めておくと気持ちが楽になりました。",
             "子どもの急な発熱で休む日に備えて、普段からできること"),
        ],
    },
    "仕事": {
        "keywords": ["仕事術", "在宅ワーク", "時短", "転職", "キャリア", "会議", "効率化", "新人",
                     "リモート", "マネジメント"],
        "entries": [
            ("在宅勤務が続くと、仕事とそれ以外の境目があいまいになりがちです。始業前に近所を10分歩き、終業後にはパソコンを棚にしまうことで、気持ちを切り替えています。",
             "在宅勤務でオンとオフを切り替える、始業前の10分散歩"),
            ("会議が多すぎて、自分の作業がいつも夕方以降になっていました。参加が本当に必要な会議だけを残し、議事録で足りるものは欠席させてもらうことにしました。",
             "会議を減らして、自分の仕事に集中できる時間を取り戻す"),
            ("新しいチームに異動して、最初の1か月は分からないことだらけでした。質問をまとめるノートを作り、1日に一度だけ先輩に時間をもらう形にしたら、お互いに気が楽になりました。",
             "異動後の1か月目、質問ノートで先輩との距離が縮まった"),
            ("メールの返信に追われて午前中が終わる日が続いていました。返信は1日3回、時間を決めてまとめて行うようにしたところ、集中できる時間が増えました。",
             "メール対応は1日3回、まとめて返すだけで集中力が戻る"),
            ("30代で初めて転職活動をしました。職務経歴書を書くうちに、自分がどんな仕事にやりがいを感じてきたのかが少しずつ見えてきました。",
             "30代の初めての転職活動で、職務経歴書が教えてくれたこと"),
            ("後輩に仕事を任せるのが苦手で、つい自分で抱え込んでいました。目的と期限だけを伝え、やり方は本人に考えてもらうようにすると、思っていた以上の提案が返ってきました。",
             "仕事を任せるのが苦手な私が、やり方を手放してみた結果"),
            ("朝いちばんに、その日にやることを3つだけ書き出しています。やることを絞ると迷う時間が減り、夕方にはきちんと終わったという手応えが残ります。",
             "朝に3つだけ書き出す、シンプルなタスク管理のすすめ"),
            ("プレゼンの前日はいつも緊張で眠れませんでした。話す内容を丸暗記するのをやめ、伝えたいことを三つの要点にまとめてから練習するようにしました。",
             "プレゼンの緊張がやわらいだ、要点を三つに絞る準備法"),
            ("オンライン会議では、相手の反応が分かりにくいと感じることがあります。話の区切りで質問を投げかけたり、チャット欄を活用したりすると、発言が増えて議論が進みやすくなりました。",
             "オンライン会議で発言を引き出すちょっとした工夫"),
            ("副業として週末にライターの仕事を始めました。本業とは違う分野の人と関わることで、自分の強みを客観的に見られるようになったと感じています。",
             "週末ライターを始めて見えてきた、本業での自分の強み"),
            ("上司との1on1ミーティングで、何を話せばいいのか分からず沈黙が続くことがありました。事前に話したいテーマを共有しておくと、短い時間でも中身のある話ができるようになりました。",
             "1on1で沈黙しないために、前日にテーマを共有しておく"),
            ("締め切り直前に慌てることが多かったので、大きな仕事は最初の日に全体の流れだけ作るようにしました。完成度が低くても一度形にしておくと、後の作業がずっと進めやすくなります。",
             "締め切り前に慌てないための、初日に全体像を作る習慣"),
        ],
    },
    "旅行": {
        "keywords": ["旅行", "京都", "紅葉", "カフェ", "温泉", "一人旅", "国内旅行", "絶景",
                     "週末旅", "北海道"],
        "entries": [
            ("11月の京都は、どこへ行っても紅葉を見に来た人でにぎわっています。朝7時台に東福寺へ向かったところ、人が少ない中で色づいた通天橋をゆっくり眺めることができました。",
             "混雑を避けて楽しむ、秋の京都は朝7時から"),
            ("初めての一人旅に選んだのは金沢でした。駅から歩ける範囲に見どころが多く、近江町市場で海鮮丼を食べたあと、ひがし茶屋街の町並みを気ままに歩きました。",
             "初めての一人旅は金沢へ、歩いて巡る1泊2日"),
            ("子ども連れの旅行では、移動時間をどう過ごすかがいちばんの悩みでした。新幹線では通路側の席を選び、シールブックと小さなおやつを用意しておくと、思ったより穏やかに過ごせました。",
             "子連れの新幹線移動を乗り切る、座席選びと持ち物"),
            ("北海道の道東をレンタカーで回りました。釧路湿原から摩周湖までは見渡す限りの草原が続き、何度も車を止めて写真を撮りました。",
             "レンタカーで巡る道東、釧路湿原から摩周湖への絶景ドライブ"),
            ("温泉旅館を選ぶとき、以前は料理の豪華さばかり見ていました。最近は部屋に露天風呂があるか、チェックアウトが遅めかどうかを重視するようになり、滞在の満足度が上がりました。",
             "温泉旅館選びで本当に大事にしたい2つのポイント"),
            ("台湾の台南は、古い町並みと屋台の食べ歩きが楽しい街です。朝は牛肉のスープ、昼は担仔麺と、一日中おいしいものを探して歩き回りました。",
             "古い町並みと屋台めぐり、台南で食べ歩く3日間"),
            ("旅行の荷物を減らしたくて、3泊の旅を機内持ち込みのスーツケース一つで出かけてみました。着回しやすい服を選び、洗濯できる素材を中心にしたことが決め手でした。",
             "3泊4日を機内持ち込みだけで、荷物を減らす服の選び方"),
            ("尾道では、坂道と路地を歩くのが何よりの楽しみでした。細い道を曲がるたびに海が見え、途中で出会った猫についていくと小さな神社にたどり着きました。",
             "坂と路地の町、尾道をのんびり散歩する休日"),
            ("平日に休みを取って、近場の温泉地に日帰りで出かけました。週末ほど混んでおらず、露天風呂を独り占めできた時間もありました。",
             "平日休みで行く日帰り温泉のすすめ"),
            ("旅先で雨に降られると、予定が崩れてがっかりしがちです。最近は美術館や老舗の喫茶店など、雨の日に行きたい場所をあらかじめ調べておくようにしています。",
             "旅先の雨も楽しめる、雨の日用リストを作っておこう"),
            ("屋久島で縄文杉を目指すトレッキングに参加しました。往復10時間近い道のりでしたが、ガイドさんが植物や島の歴史を教えてくれたので、あっという間に感じました。",
             "往復10時間の屋久島トレッキング、縄文杉に会いに行く"),
            ("寝台列車に乗るのが長年の夢でした。個室の窓から夜の景色が流れていくのを眺めながら、移動そのものを楽しむ旅の良さを改めて感じました。",
             "寝台列車で叶えた、移動そのものを楽しむ旅"),
        ],
    },
    "料理": {
        "keywords": ["料理", "作り置き", "時短レシピ", "お弁当", "節約ごはん", "和食", "献立",
                     "簡単レシピ", "おうちごはん"],
        "entries": [
            ("週末に1時間だけ作り置きをする習慣を続けています。きんぴらごぼうやひじき煮など日持ちするおかずを中心に、4品ほど作っておくと平日の夕食がぐっと楽になります。",
             "週末1時間で4品、平日を助ける作り置きおかず"),
            ("鶏むね肉はパサつきやすいのが悩みでした。塩と砂糖を溶かした水に一晩つけておくだけで、驚くほどしっとり仕上がります。",
             "鶏むね肉をしっとり仕上げる、一晩つけておくだけの下ごしらえ"),
            ("毎朝のお弁当づくりに時間がかかっていました。前の晩のおかずを少し取り分けておき、朝は卵焼きだけ作るようにしたところ、15分で完成するようになりました。",
             "朝15分で完成、夕食の取り分けで作るお弁当"),
            ("だしを取るのは面倒だと思っていましたが、水出しなら昆布とかつお節を入れて冷蔵庫に置いておくだけです。みそ汁の味が変わり、家族からもおいしいと言われました。",
             "冷蔵庫に入れておくだけ、水出しだしで変わるみそ汁"),
            ("冷蔵庫に半端な野菜が残りがちです。そんなときはまとめて刻んでスープにすると、無駄なく使い切れるうえ、翌日の朝ごはんにもなります。",
             "余った野菜を使い切る、具だくさんスープのすすめ"),
            ("パン作りを始めて1年になります。最初はうまく膨らまず失敗ばかりでしたが、室温と発酵時間を記録するようになってから、仕上がりが安定してきました。",
             "失敗続きだったパン作りが安定した、記録をつける習慣"),
            ("子どもが野菜を食べてくれないのが悩みでした。一緒に台所に立って、ピーマンの種を取る作業を任せてみると、自分で準備した料理は残さず食べてくれました。",
             "野菜嫌いの子どもが変わった、一緒に台所に立つ時間"),
            ("土鍋でご飯を炊くようになってから、炊飯器に戻れなくなりました。火加減は思ったより簡単で、強火で沸騰させてから弱火で10分、火を止めて10分蒸らすだけです。",
             "思ったより簡単、土鍋でご飯を炊く基本の手順"),
            ("忙しい平日の夕食には、フライパン一つで作れる料理に頼っています。肉と野菜を一緒に焼いて最後に調味料を回しかければ、洗い物も少なくて済みます。",
             "洗い物が少ない、フライパン一つで作る平日の夕食"),
            ("梅雨の時期になると、毎年梅しごとをしています。今年は梅干しのほかに梅シロップも仕込み、炭酸で割って夏の飲み物として楽しむ予定です。",
             "今年も始まった梅しごと、梅干しと梅シロップを仕込む"),
            ("カレーを作るとき、玉ねぎをじっくり炒めるかどうかで味が大きく変わります。時間がない日は、薄切りにして電子レンジで加熱してから炒めると、短時間で甘みが出ます。",
             "玉ねぎは電子レンジで時短、コクのあるカレーの作り方"),
            ("一人暮らしを始めてから、自炊が続かないことに悩んでいました。献立を考えるのをやめ、主菜は3パターンの使い回しと決めたら、気負わずに台所に立てるようになりました。",
             "自炊が続かない人へ、献立を考えない仕組みづくり"),
        ],
    },
    "お金": {
        "keywords": ["節約", "投資", "副業", "貯金", "家計簿", "NISA", "ポイ活", "固定費",
                     "家計管理"],
        "entries": [
            ("毎月の固定費を見直したところ、スマホの料金プランと使っていない動画配信サービスだけで月に6000円ほど削ることができました。一度見直せば効果がずっと続くのが、固定費の良いところです。",
             "固定費の見直しで月6000円、最初に手をつけたい2つの支出"),
            ("家計簿をつけてはやめるのを何度も繰り返してきました。細かい項目に分けるのをやめ、食費と日用品と娯楽の3つだけを記録するようにしたら、半年続いています。",
             "三日坊主だった家計簿が続いた、項目を3つに絞る方法"),
            ("新NISAをきっかけに、投資信託の積み立てを始めました。値動きを毎日確認すると不安になるので、確認は月に一度と決めています。",
             "新NISAで積み立て投資を始めて、月1回だけ確認すると決めた"),
            ("子どもの教育費は、いつからどれくらい準備すればいいのか悩みます。まずは児童手当をそのまま専用の口座に貯めることから始めました。",
             "教育費の準備は児童手当を貯めることから始めよう"),
            ("ポイント還元を意識して買い物をしていたら、かえって不要なものまで買っていました。ポイントはおまけと考え、必要なものを買うときだけ使うようにしています。",
             "ポイント目当ての買い物をやめて気づいた、本当の節約"),
            ("毎月の給料日に、決まった額を先に貯金用の口座へ移しています。残ったお金でやりくりする形にしてから、自然と貯金が増えるようになりました。",
             "給料日に先取り貯金、残りで暮らす仕組みで貯まる家計へ"),
            ("副業で得た収入が年間20万円を超えると、確定申告が必要になる場合があります。慌てないように、経費のレシートは月ごとに封筒に分けて保管しています。",
             "副業の確定申告に備えて、今からできるレシート整理"),
            ("食費を減らそうとして安い食材ばかり選んでいたら、結局使い切れずに捨てることが増えました。買い物の前に冷蔵庫の写真を撮るようにしたら、無駄買いが減りました。",
             "食費の節約は買い物前に冷蔵庫の写真を撮ることから"),
            ("夫婦で家計を共有するため、共通の口座を作りました。生活費はそこから払い、それ以外はそれぞれの財布で管理するので、お互いに気をつかわずに済みます。",
             "夫婦の家計管理は共通口座で、ほどよい距離感を保つ"),
            ("老後の資金について考えるのは、まだ先のことだと思っていました。ねんきん定期便を見て、将来受け取れる年金の目安を知ったことが、準備を始めるきっかけになりました。",
             "ねんきん定期便で知った、老後資金を考え始めるきっかけ"),
            ("キャッシュレス決済を使うようになって、お金を使っている感覚が薄れてしまいました。使う決済手段を一つにまとめ、毎週日曜日に利用明細を確認しています。",
             "キャッシュレスの使いすぎを防ぐ、週に一度の明細チェック"),
            ("ふるさと納税を初めて利用しました。お米やトイレットペーパーなど、普段買う日用品を返礼品に選ぶと、家計の助けになると実感しています。",
             "ふるさと納税は日用品の返礼品で家計を助ける"),
        ],
    },
    "テクノロジー": {
        "keywords": ["AI", "ガジェット", "スマホ", "プログラミング", "Python", "生成AI", "アプリ",
                     "便利ツール", "自作PC"],
        "entries": [
            ("生成AIに文章の下書きを頼むようになって、書き始めるまでの時間が短くなりました。ただし、内容の正しさは自分で確かめる必要があるので、出典の確認は欠かせません。",
             "生成AIで文章の下書きを作るときに気をつけたいこと"),
            ("古いノートパソコンのストレージをSSDに交換しました。起動にかかる時間が2分から20秒ほどになり、まだしばらく使えそうです。",
             "古いノートパソコンがよみがえった、SSDへの交換手順"),
            ("スマホの通知が多すぎて、集中が途切れることに悩んでいました。本当に必要なアプリ以外の通知をすべて切ったところ、画面を見る回数がはっきり減りました。",
             "スマホの通知を整理して、集中できる時間を増やす"),
            ("Pythonを独学で始めて3か月になります。最初は文法の本を読むだけで挫折しかけましたが、仕事で使っている表の集計を自動化する目標を立ててから、学ぶのが楽しくなりました。",
             "Pythonの独学が続いた理由は、身近な作業の自動化だった"),
            ("家族の写真がスマホやパソコンに散らばっていたので、クラウドのアルバムにまとめました。撮影した日付ごとに自動で整理されるため、見返すのが楽しみになりました。",
             "散らばった家族写真をクラウドにまとめて見返しやすく"),
            ("パスワードを使い回していたことに不安を感じ、パスワード管理アプリを使い始めました。サイトごとに長いパスワードを自動で作ってくれるので、覚えておく必要もありません。",
             "パスワードの使い回しをやめるために、管理アプリを導入した話"),
            ("スマートスピーカーを置いてから、家事をしながらタイマーや天気の確認ができるようになりました。手がふさがっている料理中には特に便利です。",
             "スマートスピーカーで家事がはかどる、料理中の使い方"),
            ("自宅のWi-Fiが2階でつながりにくいのが悩みでした。中継機を階段の近くに置いたところ、寝室でも動画が止まらずに見られるようになりました。",
             "2階でWi-Fiがつながらない悩みを中継機で解決"),
            ("子どもに初めてスマホを持たせるにあたって、家族で使い方のルールを話し合いました。使う時間と場所を決め、困ったときはすぐに相談することを約束しました。",
             "子どもに初めてスマホを渡す前に、家族で決めたルール"),
            ("表計算ソフトの関数を覚えてから、毎月の報告書づくりにかかる時間が半分になりました。最初に覚えるなら、集計と検索に使う関数から始めるのがおすすめです。",
             "報告書づくりが半分の時間に、まず覚えたい表計算の関数"),
            ("電子書籍リーダーを買ってから、通勤中の読書量が増えました。文字の大きさを変えられるので、揺れる電車の中でも目が疲れにくいと感じます。",
             "通勤中の読書が増えた、電子書籍リーダーの良いところ"),
            ("スマホで写真を撮るとき、光の向きを意識するだけで仕上がりが変わります。窓からの自然光を横から当てると、料理の写真もぐっとおいしそうに見えます。",
             "スマホでも料理がおいしそうに撮れる、光の向きのコツ"),
            ("2024年は、仕事でも家庭でもAIを使う場面が一気に増えた一年でした。議事録の要約や献立の相談など、身近な使い方をふり返ってみます。",
             "2024年をふり返る、AIが身近になった暮らしと仕事"),
        ],
    },
    "健康": {
        "keywords": ["健康", "睡眠", "筋トレ", "ダイエット", "ウォーキング", "食生活", "ストレッチ",
                     "メンタル", "朝活"],
        "entries": [
            ("寝る前にスマホを見る習慣をやめて2週間がたちました。代わりに紙の本を読むようにしたところ、寝つきが良くなり、朝もすっきり起きられる日が増えています。",
             "寝る前のスマホをやめて2週間、睡眠の質が変わった"),
            ("運動が苦手な私でも続けられたのが、1日20分のウォーキングです。通勤の帰りに一駅手前で降りて歩くだけなので、特別な準備もいりません。",
             "一駅手前で降りるだけ、運動が苦手でも続くウォーキング"),
            ("デスクワークで肩こりがひどく、1時間に一度立ち上がって肩を回すようにしました。タイマーをかけておくと忘れずに続けられます。",
             "デスクワークの肩こり対策は、1時間ごとの小さなストレッチ"),
            ("自宅での筋トレを始めて半年になります。スクワットと腕立て伏せを毎日少しずつ続けた結果、階段を上っても息が切れにくくなりました。",
             "自宅の筋トレを半年続けて、階段で息が切れなくなった"),
            ("健康診断で血圧が高めだと言われ、食事の塩分を見直しました。みそ汁を1日1杯にし、しょうゆは小皿に少しだけ出すようにしています。",
             "血圧が気になり始めたら、無理なく減塩する食事の工夫"),
            ("仕事のストレスで眠れない日が続いたとき、寝る前に3分だけ深呼吸をする習慣を始めました。ゆっくり息を吐くことに意識を向けると、体の力が抜けていくのを感じます。",
             "眠れない夜に、寝る前3分の深呼吸を試してみた"),
            ("朝ごはんを抜くことが多かったのですが、バナナとヨーグルトだけでも食べるようにしました。午前中に集中力が落ちることが少なくなったように思います。",
             "朝ごはんはバナナとヨーグルトだけでも、午前の集中が変わる"),
            ("花粉症の時期は、外から帰ったらすぐに上着を玄関で脱ぐようにしています。部屋に花粉を持ち込まないだけで、夜の鼻づまりがかなり楽になりました。",
             "花粉を部屋に持ち込まない、帰宅後すぐの小さな習慣"),
            ("水をこまめに飲むのが苦手で、気づくと夕方までほとんど飲んでいない日がありました。机の上に500ミリリットルのボトルを置き、午前と午後で1本ずつ空けることを目標にしています。",
             "水を飲むのが苦手な人へ、ボトル2本で続ける水分補給"),
            ("40代になってから、夕方になると目の疲れを強く感じるようになりました。画面の明るさを下げ、20分ごとに遠くを見るようにしたら、少し楽になってきました。",
             "40代からの目の疲れ対策、20分ごとに遠くを見る習慣"),
            ("ダイエットのために夕食の炭水化物を抜いていましたが、夜中にお腹が空いて結局食べてしまうことがありました。量を半分にして野菜を増やす方法に変えたら、無理なく続いています。",
             "炭水化物を抜かないダイエット、量を半分にして続ける"),
            ("ヨガ教室に通い始めて、呼吸に合わせて体を動かす心地よさを知りました。体が硬くても、できる範囲で続けることが大切だと先生に教わりました。",
             "体が硬くても大丈夫、ヨガを始めて知った呼吸の心地よさ"),
        ],
    },
    "暮らし": {
        "keywords": ["片付け", "収納", "掃除", "一人暮らし", "インテリア", "ミニマリスト", "模様替え",
                     "暮らし", "整理整頓"],
        "entries": [
            ("クローゼットの服を全部出して、1年以上着ていないものを手放しました。残った服は半分ほどになり、毎朝の服選びに迷う時間がほとんどなくなりました。",
             "1年着ていない服を手放したら、朝の服選びが楽になった"),
            ("キッチンの引き出しの中を、使う頻度で並べ替えました。毎日使う道具を手前に、年に数回しか使わないものは上の棚に移すだけで、料理中の動きがスムーズになります。",
             "使う頻度で並べ替えるだけ、キッチン収納の見直し方"),
            ("一人暮らしの部屋が狭く、ずっと圧迫感がありました。背の高い家具を減らし、床が見える面積を増やしたら、部屋が広く感じられるようになりました。",
             "狭い一人暮らしの部屋を広く見せる家具の選び方"),
            ("掃除は週末にまとめてやるものだと思っていました。今は毎日5分だけ、場所を決めて掃除する方法に変えたので、週末にゆっくり過ごせます。",
             "毎日5分の場所決め掃除で、週末を自由な時間に"),
            ("引っ越しの荷造りは、使わない部屋から始めるのが鉄則だと聞きました。箱にはどの部屋のものかと中身を書いておくと、新居での荷ほどきが驚くほど楽になります。",
             "引っ越しの荷造りを楽にする、箱に書いておきたいこと"),
            ("観葉植物を置くと部屋の雰囲気が変わると聞き、リビングにポトスを迎えました。水やりは土が乾いてからで良いので、初心者でも育てやすいと感じています。",
             "初めての観葉植物にポトスを選んでよかった理由"),
            ("冬の結露に毎朝悩まされていました。窓に断熱シートを貼り、朝と夜に数分だけ換気をするようにしたら、カビの心配が減りました。",
             "冬の窓の結露を減らす、断熱シートと短い換気"),
            ("紙の書類がたまりやすいので、届いたその日に要るものと要らないものを分けるようにしています。保管が必要なものは、一つのファイルボックスにまとめています。",
             "紙の書類をためない、届いた日に仕分けるだけの整理術"),
            ("洗濯物をたたむのが苦手で、いつもソファに山ができていました。ハンガーにかけたまま収納できるものを増やしたら、たたむ量がぐっと減りました。",
             "洗濯物をたたむのが苦手なら、ハンガー収納を増やそう"),
            ("模様替えでソファの向きを窓側に変えてみました。朝の光を浴びながらコーヒーを飲む時間ができ、部屋で過ごすのが前より楽しくなりました。",
             "ソファの向きを変えるだけ、気分が上がる模様替え"),
            ("ごみの分別が細かい地域に引っ越して、最初は戸惑いました。キッチンの下に分別用の箱を並べ、収集日をカレンダーに書き込んでからは、迷わなくなりました。",
             "ごみの分別に迷わなくなった、キッチン下の仕組みづくり"),
            ("ものを買う前に、家のどこに置くかを決めるようにしています。置き場所が思い浮かばないものは買わないと決めてから、部屋が散らかりにくくなりました。",
             "買う前に置き場所を決める、散らからない部屋のルール"),
        ],
    },
    "学び": {
        "keywords": ["勉強法", "英語", "資格", "読書", "独学", "TOEIC", "語学", "ノート術",
                     "学び直し"],
        "entries": [
            ("英語の勉強を何度も挫折してきましたが、毎朝15分だけ音読する習慣は1年続いています。同じ文章を声に出して読むうちに、聞き取れる表現が少しずつ増えてきました。",
             "英語の挫折をくり返した私が1年続けた、朝15分の音読"),
            ("資格試験の勉強では、参考書を1冊に絞ったのが合格の決め手でした。何冊も手を出すより、同じ問題集を3回解くほうが理解が深まります。",
             "資格試験は参考書を1冊に絞る、合格につながった勉強法"),
            ("読んだ本の内容をすぐに忘れてしまうのが悩みでした。読み終えたら、印象に残った一文と自分の感想を3行だけノートに書くようにしています。",
             "読んだ本を忘れないための、3行だけの読書ノート"),
            ("仕事終わりの勉強は疲れて続かなかったので、朝の時間に切り替えました。出勤前の30分をカフェで過ごすと決めたら、平日でも勉強時間を確保できるようになりました。",
             "社会人の勉強時間は、出勤前のカフェで30分"),
            ("子どもと一緒に図鑑を読むようになって、大人の私のほうが新しい発見をしています。知らなかった虫の名前を覚えて、散歩のときに探すのが親子の楽しみになりました。",
             "図鑑で親子の散歩が楽しくなる、大人も学べる発見"),
            ("オンライン英会話を始めたものの、最初は緊張して何も話せませんでした。レッスンの前に話したい話題を三つメモしておくと、会話が続くようになりました。",
             "オンライン英会話で話せなかった私が、事前に準備したこと"),
            ("50歳を過ぎてから、大学の公開講座で歴史を学んでいます。同じ教室には年齢も職業もさまざまな人がいて、毎回の議論が刺激になっています。",
             "50歳からの学び直し、大学の公開講座で歴史を学ぶ"),
            ("暗記が苦手な私は、覚えたいことを人に説明するつもりでノートにまとめています。自分の言葉で書き直すと、どこが分かっていないのかがはっきりします。",
             "人に説明するつもりで書く、暗記が苦手な人のノート術"),
            ("TOEICの点数がなかなか上がらず、勉強のやり方を見直しました。問題を解く量を減らし、間違えた問題をなぜ間違えたのか書き出すようにしたら、半年で100点上がりました。",
             "TOEICが半年で100点上がった、間違いノートの作り方"),
            ("独学でイラストを描き始めて2年になります。毎日1枚、短い時間でも描くことを続けたら、描き始める前の迷いが減って、手が自然に動くようになりました。",
             "独学でイラストを続けて2年、毎日1枚描いて変わったこと"),
            ("中国語を学び始めて、発音の難しさに驚きました。声調を正しく身につけるために、自分の声を録音してネイティブの音声と聞き比べています。",
             "中国語の発音は録音して聞き比べると上達が早い"),
            ("勉強の計画を立てても、予定どおりに進まず落ち込むことがありました。1週間の計画に予備の日を1日入れておくと、遅れても取り戻せるので気持ちが楽です。",
             "計画どおりに進まなくても大丈夫、予備日を入れた勉強計画"),
        ],
    },
    "アウトドア": {
        "keywords": ["キャンプ", "アウトドア", "初心者", "道具", "登山", "ソロキャンプ", "焚き火",
                     "山ごはん", "デイキャンプ"],
        "entries": [
            ("初めてのキャンプは、道具をすべてレンタルできるキャンプ場を選びました。テントの張り方もスタッフの方が教えてくれたので、不安なく一晩を過ごせました。",
             "初めてのキャンプは、道具をレンタルできるキャンプ場で"),
            ("ソロキャンプでは、荷物をどれだけ減らせるかがいつも課題です。調理は湯を沸かすだけにして、食器はシェラカップ一つで済ませるようにしています。",
             "ソロキャンプの荷物を減らす、シェラカップ一つの調理術"),
            ("秋の低山ハイキングは、暑すぎず歩きやすいのが魅力です。標高が低い山でも天気が変わりやすいので、雨具と防寒着は必ずザックに入れています。",
             "秋の低山ハイキング、初心者でも忘れたくない持ち物"),
            ("焚き火を楽しむために、まずは薪の組み方を覚えました。細い枝から順に太い薪を重ねていくと、着火剤が少なくてもしっかり燃えてくれます。",
             "着火剤に頼らない、焚き火のための薪の組み方"),
            ("子どもと一緒にデイキャンプに行きました。川で石を拾ったり、バーベキューの準備を手伝ってもらったりと、泊まらなくても十分に自然を楽しめました。",
             "泊まらなくても楽しめる、子どもと行くデイキャンプ"),
            ("冬キャンプに挑戦するため、寝袋とマットを見直しました。地面からの冷えを防ぐには、寝袋よりもマットの厚さが大事だと実感しています。",
             "冬キャンプの寒さ対策は、寝袋よりもマット選びが大事"),
            ("山ごはんの定番はカップ麺でしたが、最近はおにぎりと具だくさんのスープを作るのが楽しみです。山頂で食べる温かいスープは、家で食べるよりずっとおいしく感じます。",
             "山頂で食べたい、温かいスープとおにぎりの山ごはん"),
            ("雨のキャンプは大変だと思っていましたが、タープの下でテントに当たる雨音を聞きながら過ごす時間は、意外と心地よいものでした。",
             "雨の日のキャンプも悪くない、タープの下で過ごす静かな時間"),
            ("登山を始めたばかりのころ、靴選びで失敗して足を痛めました。専門店で足の形を測ってもらい、自分に合う登山靴を選んでからは、長い下り坂も楽に歩けます。",
             "足を痛めて学んだ、登山靴は専門店で選ぶべき理由"),
            ("キャンプ場でのマナーについて考えさせられる出来事がありました。夜遅くまで大きな声で話すグループがいて、静かな夜を楽しみにしていた人たちが困っていました。",
             "気持ちよく過ごすために、キャンプ場で守りたい夜のマナー"),
            ("カヌー体験に参加して、湖の上から眺める景色の美しさに驚きました。インストラクターの方がこぎ方を丁寧に教えてくれたので、初めてでもすぐに慣れました。",
             "初めてのカヌー体験、湖の上から見た景色"),
            ("キャンプ道具は一度にそろえず、少しずつ買い足すようにしています。実際に使ってみて足りないと感じたものだけを選ぶので、無駄な買い物が減りました。",
             "キャンプ道具は少しずつ、使ってから買い足すのが正解"),
        ],
    },
    "ペット": {
        "keywords": ["猫", "犬", "ペット", "保護猫", "多頭飼い", "しつけ", "猫のいる暮らし", "散歩",
                     "動物病院"],
        "entries": [
            ("保護猫を家族に迎えて1年がたちました。最初は物陰に隠れてばかりでしたが、今では毎晩ひざの上で眠ってくれます。",
             "保護猫を迎えて1年、ひざの上で眠るようになるまで"),
            ("犬の散歩の時間を朝と夕方に分けるようにしました。暑い季節はアスファルトが熱くなるので、朝は早めに、夕方は日が沈んでから出かけています。",
             "夏の犬の散歩は時間帯に注意、朝と夕方の使い分け"),
            ("猫が爪とぎでソファを傷つけるのが悩みでした。段ボールの爪とぎをソファのすぐ横に置いたところ、そちらを使ってくれるようになりました。",
             "ソファで爪をとぐ猫に、爪とぎの置き場所を変えてみた"),
            ("2匹目の猫を迎えるとき、先住猫との相性がいちばんの心配でした。最初の1週間は部屋を分け、においに慣れさせてから少しずつ会わせるようにしました。",
             "先住猫と新入り猫の顔合わせ、最初の1週間の過ごし方"),
            ("子犬のしつけで、トイレを覚えるまでに時間がかかりました。成功したときにすぐほめることを家族全員で徹底したら、2週間ほどで失敗が減りました。",
             "子犬のトイレトレーニングは、家族全員でほめることから"),
            ("ペットと一緒に泊まれる宿に初めて泊まりました。部屋に足洗い場があり、犬用の食器やベッドも用意されていて、安心して過ごせました。",
             "愛犬と泊まれる宿に初めて泊まって感じたこと"),
            ("高齢になった猫の食事を、やわらかいフードに切り替えました。かかりつけの獣医さんと相談しながら、量と回数を少しずつ調整しています。",
             "高齢猫の食事の見直し、獣医さんと相談して決めたこと"),
            ("インコを飼い始めて、言葉をまねするのを楽しみにしていました。毎朝同じ言葉で声をかけていたら、3か月目に初めておはようと言ってくれました。",
             "インコが初めておはようと言った日のこと"),
            ("猫が夜中に走り回って眠れない日が続きました。寝る前の15分、おもちゃでしっかり遊ぶようにしたら、朝まで静かに寝てくれるようになりました。",
             "夜中に走り回る猫には、寝る前15分の遊び時間を"),
            ("留守番中の犬の様子が気になり、見守りカメラを設置しました。外出先からスマホで確認できるので、仕事中も安心していられます。",
             "留守番中の愛犬が気になるなら、見守りカメラが心強い"),
            ("金魚の水槽の水替えは、一度に全部替えないことが大切だと知りました。3分の1ほどを週に一度替えるようにしてから、金魚が元気に泳いでいます。",
             "金魚が元気になった、水槽の水替えは3分の1ずつ"),
            ("ペットの防災について考え、キャリーケースとフードを玄関の近くにまとめました。いざというときに一緒に避難できるよう、普段からキャリーに慣れさせています。",
             "いざというときのために、ペットと一緒に備える防災"),
        ],
    },
    "ガーデニング": {
        "keywords": ["ガーデニング", "ベランダ菜園", "観葉植物", "家庭菜園", "花のある暮らし",
                     "多肉植物", "ハーブ", "園芸"],
        "entries": [
            ("ベランダでミニトマトを育て始めました。毎朝水やりをしながら実が赤くなっていくのを見るのが、一日の始まりの楽しみになっています。",
             "ベランダで育てるミニトマト、朝の水やりが楽しみに"),
            ("多肉植物は水やりが少なくて済むと聞き、窓辺にいくつか並べています。水のあげすぎで根腐れさせてしまったことがあり、今は土がしっかり乾いてから与えています。",
             "多肉植物の根腐れを防ぐ、水やりのタイミング"),
            ("庭の一角に小さな家庭菜園を作りました。最初の年は欲張って何種類も植えましたが、手が回らず、今年は育てやすいナスとピーマンに絞っています。",
             "家庭菜園は欲張らない、育てやすい野菜に絞った2年目"),
            ("秋に植えたチューリップの球根が、ようやく花を咲かせました。植えてから半年待った分、咲いたときの喜びはひとしおです。",
             "秋に植えて春を待つ、チューリップが咲いた日"),
            ("観葉植物の葉が黄色くなってしまい、置き場所を見直しました。直射日光の当たらない明るい窓辺に移したところ、新しい葉が次々に出てきました。",
             "観葉植物の葉が黄色くなったら、まず置き場所の見直しを"),
            ("キッチンの窓辺でバジルとパセリを育てています。料理のときに必要な分だけ摘めるので、買ってきても使い切れずに傷ませることがなくなりました。",
             "キッチンの窓辺で育てるハーブ、使う分だけ摘める便利さ"),
            ("夏の水やりは、朝の涼しい時間に済ませるようにしています。日中に水をあげると、土の中の温度が上がって根を傷めることがあるそうです。",
             "夏の水やりは朝のうちに、植物を守る時間帯の選び方"),
            ("生ごみを減らしたくて、ベランダでコンポストを始めました。野菜くずが数か月で土に変わり、その土で育てた花がよく育っています。",
             "ベランダでコンポストを始めて、生ごみが土に変わるまで"),
            ("バラを育てるのは難しいと思っていましたが、病気に強い品種を選んだら、初心者でも毎年きれいに咲いてくれます。剪定の時期だけは、カレンダーに書いて忘れないようにしています。",
             "バラは難しくない、初心者には病気に強い品種がおすすめ"),
            ("引っ越し先の庭に雑草が生い茂っていて、どこから手をつければいいか迷いました。雨上がりの土がやわらかい日に少しずつ抜くと、根まできれいに取れます。",
             "雑草取りは雨上がりが狙い目、根まで抜けるタイミング"),
            ("植え替えのタイミングが分からず、鉢の中が根でいっぱいになっていました。鉢底から根が出てきたら、ひと回り大きな鉢に移すのが目安だそうです。",
             "鉢底から根が出てきたら植え替えのサイン"),
            ("ひまわりの種を子どもと一緒にまきました。毎日背比べをしながら成長を記録し、夏休みの自由研究にまとめる予定です。",
             "子どもと育てるひまわり、夏休みの自由研究にも"),
        ],
    },
}

# Titles whose letters/digits the generator writes full-width (the engine narrows them back).
JA_FULLWIDTH_TITLES = [
    "生成AIで文章の下書きを作るときに気をつけたいこと",
    "新NISAで積み立て投資を始めて、月1回だけ確認すると決めた",
    "2024年をふり返る、AIが身近になった暮らしと仕事",
]

# Japanese question/answer pairs (mixed_formats.jsonl, `question`/`answer` columns).
JA_QA = [
    ("日本で一番高い山はどこですか。",
     "日本で一番高い山は富士山で、標高は3776メートルです。静岡県と山梨県の境にあります。"),
    ("緑茶を淹れるときのお湯の温度は何度くらいがいいですか。",
     "緑茶なら70度から80度くらいが目安です。熱すぎると苦みが強く出るので、一度湯のみに移して冷ましてから注ぐとよいでしょう。"),
    ("「情けは人のためならず」とはどういう意味ですか。",
     "人に親切にすれば、めぐりめぐって自分にも良いことが返ってくるという意味です。人を甘やかすのはよくない、という意味ではありません。"),
    ("雨の日に洗濯物を早く乾かすコツはありますか。",
     "洗濯物の間をこぶし一つ分ほど空けて干し、扇風機やエアコンの風を当てると早く乾きます。厚手のものは外側に、薄手のものは内側に干すのも効果的です。"),
    ("新幹線の自由席と指定席はどう違いますか。",
     "指定席は座る席があらかじめ決まっていて、必ず座ることができます。自由席は料金が少し安い代わりに空いている席に座る方式なので、混雑する時期は座れないこともあります。"),
]
JA_QA_LEADS = ["ひとつ質問です。", "前から気になっていたのですが、", "教えてください。",
               "ふと疑問に思ったのですが、", "子どもに聞かれて答えられなかったのですが、",
               "基本的なことかもしれませんが、"]

# ---------------------------------------------------------------------------------------
# English: instructions and answers (ShareGPT rows), multi-turn chats, mixed-format rows.
# ---------------------------------------------------------------------------------------

EN_SYSTEM = [
    "You are a helpful assistant.",
    "You are a friendly and knowledgeable assistant. Answer clearly and concisely.",
    "You are an assistant that gives practical, step-by-step advice.",
]

# Lead-ins put in front of a question when --rows-scale asks for more distinct rows.
EN_LEADS = [
    "Quick question.", "I was wondering about this today.", "My friend and I were just talking about this.",
    "Sorry if this is a basic question.", "I've been curious about this for a while.",
    "Hoping you can help me out.", "This came up at work today.", "My kids asked me this and I wasn't sure.",
    "I read something about this last week.", "Here is something I never quite understood.",
    "I'd love a clear answer on this.", "A coworker asked me this yesterday.",
    "I'm trying to get better at this.", "Please keep it short.", "I'm new to this topic.",
    "This is for a class I'm taking.", "I keep getting this wrong.", "Asking for a friend.",
    "I tried searching but got confused.", "Thanks in advance for your help.",
]

EN_QA = [
    ("How can I fall asleep faster at night?",
     "Keep a consistent bedtime and wake-up time, even on weekends, so your body learns when to expect sleep. Avoid screens for about an hour before bed, since bright light delays the release of melatonin. If you still lie awake for more than twenty minutes, get up and do something calm in dim light until you feel sleepy."),
    ("Explain what compound interest is.",
     "Compound interest is interest calculated on both the money you deposited and the interest it has already earned. Because each period's interest is added to the balance, the amount grows faster over time than it would with simple interest. For example, $1,000 at 5% a year becomes about $1,629 after ten years, instead of $1,500."),
    ("What is the difference between a list and a tuple in Python?",
     "A list is mutable, so you can add, remove or change its items after creating it. A tuple is immutable: once it is created, its contents cannot change. Tuples are often used for fixed collections such as coordinates, and when all their items are hashable they can serve as dictionary keys."),
    ("Give me three ideas for a rainy-day activity with kids.",
     "You could build a blanket fort in the living room and turn it into a reading den with flashlights. Another option is a simple baking project, such as decorating cookies, which keeps small hands busy. Finally, try a scavenger hunt around the house with clues written on sticky notes."),
    ("How do I politely decline a meeting invitation at work?",
     "Thank the organizer, explain briefly why you cannot attend, and offer an alternative if you can. For example: \"Thanks for including me. I have a deadline that afternoon, so I won't be able to join, but I'd be glad to read the notes and send my comments by Friday.\" Keeping it short and constructive shows respect for their time."),
    ("Why is the sky blue?",
     "Sunlight contains all colors, but when it passes through the atmosphere, the short blue wavelengths are scattered by gas molecules much more than the longer red ones. This scattered blue light reaches our eyes from every direction, so the whole sky looks blue. At sunrise and sunset the light travels through more air, the blue is scattered away, and reds and oranges dominate."),
    ("What are some tips for writing a good cover letter?",
     "Tailor each letter to the specific job by mentioning the company and the role's key requirements. Open with a clear statement of why you are interested, then give one or two concrete examples of results you have achieved. Keep it to one page and end by saying you would welcome the chance to discuss the position."),
    ("How often should I water a cactus?",
     "Most cacti need water only when their soil is completely dry, which usually means every two to three weeks in spring and summer. In winter, when the plant is dormant, once a month or even less is enough. Overwatering is the most common way to kill a cactus, so when in doubt, wait a few more days."),
    ("Explain the rule of thirds in photography.",
     "The rule of thirds divides the frame into a grid of three rows and three columns. Placing your subject along one of these lines, or where two of them cross, usually creates a more balanced and interesting picture than centering it. Many cameras and phones can display the grid to help you compose."),
    ("What is a good way to start learning to run?",
     "Begin with a walk-run plan: for example, alternate one minute of easy jogging with two minutes of walking for twenty minutes, three times a week. Each week, lengthen the running intervals a little. Running slowly enough to hold a conversation keeps the effort manageable and lowers the risk of injury."),
    ("Can you explain what inflation means?",
     "Inflation is the general rise in prices over time, which means each unit of money buys a little less than before. Moderate inflation is normal in a growing economy, and many central banks aim for about two percent a year. When inflation is high, savings lose value quickly and planning becomes harder for households and businesses."),
    ("How do I remove a coffee stain from a cotton shirt?",
     "Rinse the stain from the back with cold water as soon as possible to push the coffee out of the fibers. Then rub in a little liquid laundry detergent, let it sit for five minutes, and wash the shirt as usual. Check that the stain is gone before drying, because heat can set it permanently."),
    ("What is the difference between affect and effect?",
     "In most cases, \"affect\" is a verb meaning to influence, while \"effect\" is a noun meaning a result. For example, the weather can affect your mood, and the effect may last all day. A handy memory trick is that action starts with A, and affect is the action."),
    ("Write a short motivational message for a friend starting a new job.",
     "Congratulations on the new job! Remember that nobody expects you to know everything on the first day, so ask plenty of questions and give yourself time to settle in. They chose you for a reason, and I can't wait to hear how it goes."),
    ("How do vaccines work?",
     "A vaccine shows your immune system a harmless piece or weakened version of a germ, so it can learn to recognize it. Your body responds by making antibodies and memory cells. If you meet the real germ later, your immune system can react quickly and stop the infection before it becomes serious."),
    ("What should I pack for a weekend hiking trip?",
     "Bring layers you can add or remove, a waterproof jacket, and comfortable boots that are already broken in. Pack enough water and high-energy snacks, a map or downloaded route, a small first-aid kit, and a headlamp in case you finish later than planned. Tell someone where you are going and when you expect to be back."),
    ("Explain what an API is to a non-technical person.",
     "An API is like a waiter in a restaurant: you tell the waiter what you want, the waiter takes your order to the kitchen, and then returns with your food. In software, an API lets one program ask another for data or actions without needing to know how the other program works inside. Weather apps, for example, use APIs to fetch forecasts from weather services."),
    ("How can I reduce food waste at home?",
     "Plan your meals before shopping and buy only what you need for the next few days. Store food properly, keep older items at the front of the fridge, and freeze bread or leftovers you will not eat soon. Vegetable scraps can become soup stock, and overripe bananas are perfect for baking."),
    ("What is the capital of Australia, and why isn't it Sydney?",
     "The capital of Australia is Canberra. When the colonies united in 1901, Sydney and Melbourne both wanted to be the capital, so a compromise was reached to build a new city between them. Canberra was designed for the purpose, and Parliament moved there in 1927."),
    ("Give me a simple recipe for tomato soup.",
     "Soften a chopped onion and two cloves of garlic in olive oil, then add a can of whole tomatoes and two cups of vegetable stock. Simmer for about twenty minutes, blend until smooth, and season with salt, pepper and a pinch of sugar. A swirl of cream or a few basil leaves on top makes it feel special."),
    ("How do I stop procrastinating?",
     "Break the task into a first step so small that it feels almost silly, such as opening the document and writing one sentence. Set a timer for twenty-five minutes and work only on that task until it rings. Starting is usually the hardest part, and momentum tends to carry you further than you expect."),
    ("What causes the seasons on Earth?",
     "The seasons are caused by the tilt of Earth's axis, which is about 23.5 degrees. As Earth orbits the Sun, each hemisphere takes turns leaning toward it and receiving more direct sunlight and longer days. It is not because Earth is closer to the Sun in summer; in fact, Earth is closest to the Sun in early January."),
    ("How should I prepare for a job interview?",
     "Research the company's products, values and recent news, and think about how your experience fits the role. Prepare short stories that show how you solved problems, describing the situation, your action and the result. Finally, have two or three thoughtful questions ready to ask the interviewer at the end."),
    ("What is the difference between baking soda and baking powder?",
     "Baking soda is pure sodium bicarbonate and needs an acidic ingredient, such as buttermilk or lemon juice, to release carbon dioxide and make dough rise. Baking powder already contains both baking soda and a dry acid, so it only needs moisture and heat. That is why recipes without acidic ingredients usually call for baking powder."),
    ("Explain photosynthesis in simple terms.",
     "Photosynthesis is the process plants use to make their own food. Using energy from sunlight, they combine water from the soil with carbon dioxide from the air to produce sugar. Oxygen is released as a by-product, which is why plants are so important for the air we breathe."),
    ("How do I keep my houseplants alive while I'm on vacation?",
     "Water them thoroughly just before you leave and move them away from hot, sunny windows so they dry out more slowly. For trips longer than a week, group plants together on a tray of wet pebbles or use a self-watering spike. Asking a neighbor to check on them once is still the most reliable option."),
    ("What are the benefits of learning a second language?",
     "Learning another language lets you talk with more people and understand other cultures from the inside. Studies also suggest it improves attention and the ability to switch between tasks. On a practical level, it can open up job opportunities and make traveling much richer."),
    ("What is a haiku? Write one about the ocean.",
     "A haiku is a short poem of three lines with five, seven and five syllables. Here is one about the ocean:\n\nGray waves fold and break\nsalt wind carries gull voices\nthe tide takes my steps"),
    ("How can I make my passwords more secure?",
     "Use long passphrases of four or more random words rather than short, complex strings, and never reuse a password on more than one site. A password manager can create and remember unique passwords for you. Turning on two-factor authentication adds another layer of protection if a password is ever leaked."),
    ("Why do cats purr?",
     "Cats often purr when they are relaxed and content, for example while being stroked. However, they also purr when they are stressed, injured or giving birth, which suggests purring can be a way to calm themselves. Some researchers believe the low-frequency vibrations may even help bones and tissues heal."),
    ("What's a good way to organize a small closet?",
     "Start by removing anything you have not worn in a year, then group the remaining clothes by type. Use slim matching hangers to save space, add a second rod or hanging shelves for folded items, and store off-season clothes in bins on the top shelf. Keeping everything visible makes it easier to get dressed quickly."),
    ("Explain the difference between a virus and a bacterium.",
     "Bacteria are single-celled living organisms that can reproduce on their own, and many of them are harmless or even helpful. Viruses are much smaller and cannot reproduce without entering a host cell and using its machinery. This is why antibiotics can treat bacterial infections but have no effect on viruses."),
    ("How do I make a budget for the first time?",
     "Write down your monthly income after tax, then list fixed costs such as rent, utilities and transport. Track your spending on everything else for one month to see where the money really goes. Finally, set limits for each category and decide on an amount to save first, so saving does not depend on what is left over."),
    ("What is the best way to memorize vocabulary?",
     "Spaced repetition works best: review new words after a day, then after a few days, then after a week or two. Flashcard apps automate this schedule for you. Learning words in example sentences, and using them in your own writing or speech, helps them stick much longer than memorizing lists."),
    ("Why do leaves change color in autumn?",
     "Leaves are green because of chlorophyll, which plants use to capture sunlight. As days get shorter and cooler in autumn, trees stop producing chlorophyll and it breaks down. This reveals yellow and orange pigments that were there all along, while some trees also produce red pigments in their final weeks."),
    ("How do I give constructive feedback to a coworker?",
     "Choose a private moment and focus on a specific behavior rather than the person's character. Describe what happened, explain its impact, and suggest what could work better next time. Ending by asking for their view turns the conversation into a discussion instead of a lecture."),
    ("What does a project manager do?",
     "A project manager plans a project, sets its schedule and budget, and makes sure the right people are working on the right tasks. During the project, they track progress, remove obstacles and keep stakeholders informed. Their goal is to deliver the agreed result on time and within budget."),
    ("How can I improve my handwriting?",
     "Slow down and focus on forming each letter consistently, since speed is usually what makes handwriting messy. Hold the pen loosely and move from your arm and shoulder rather than just your fingers. Practicing for ten minutes a day by copying a short passage will show improvement within a few weeks."),
    ("What is the greenhouse effect?",
     "The greenhouse effect is the warming of Earth's surface by gases in the atmosphere, such as carbon dioxide and water vapor. These gases let sunlight in but trap some of the heat that the ground radiates back out. Without it, Earth would be far too cold for life, but adding more of these gases makes the planet warmer."),
    ("Recommend a way to learn basic cooking skills.",
     "Start with a few versatile techniques rather than many recipes: boiling pasta, roasting vegetables, cooking rice and frying an egg. Once you are comfortable with those, combine them into simple meals and vary the seasonings. Cooking the same dish several times teaches you more than trying a new recipe every night."),
    ("What is the difference between a crocodile and an alligator?",
     "Alligators have wide, U-shaped snouts, while crocodiles have narrower, V-shaped ones. When a crocodile closes its mouth, the fourth tooth on its lower jaw remains visible, but an alligator's lower teeth are hidden. Alligators live mainly in fresh water in the United States and China, whereas crocodiles are found in many tropical regions and tolerate salt water."),
    ("How do I write a clear email subject line?",
     "Summarize the purpose of the email in a few specific words, such as \"Budget draft for review by Thursday.\" Put the most important information first, since long subjects are cut off on phones. If you need a reply or an action, say so in the subject so the reader knows what is expected."),
    ("Why do we have leap years?",
     "A year on Earth, the time it takes to orbit the Sun, is about 365.24 days long. Adding one extra day every four years keeps our calendar in step with the seasons. Years divisible by 100 are skipped unless they are also divisible by 400, which is why 2000 was a leap year but 1900 was not."),
    ("What are some ways to save energy at home?",
     "Switch to LED bulbs, which use far less electricity than older bulbs and last much longer. Seal drafts around windows and doors, and lower the thermostat by a degree or two in winter. Unplugging chargers and devices when you are not using them also cuts standby power."),
    ("How can I be a better listener?",
     "Give the speaker your full attention by putting away your phone and making eye contact. Let them finish before you respond, and resist planning your answer while they are still talking. Asking a follow-up question or briefly summarizing what you heard shows that you understood."),
    ("Explain what machine learning is.",
     "Machine learning is a way of building software that learns patterns from examples instead of following rules written by hand. For instance, instead of writing instructions to recognize spam, you show the program thousands of emails labeled as spam or not, and it learns what tends to separate them. The more good examples it sees, the better its predictions usually become."),
    ("What is a good stretching routine after running?",
     "Spend about five minutes stretching while your muscles are still warm. Stretch your calves against a wall, pull each heel toward your buttock for the quadriceps, and fold forward gently for the hamstrings, holding each stretch for about thirty seconds. Breathe slowly and never bounce, since stretching should feel comfortable rather than painful."),
    ("How does a refrigerator keep food cold?",
     "A refrigerator pumps a special fluid called a refrigerant through a closed loop of pipes. Inside the fridge the refrigerant evaporates and absorbs heat from the food, and outside, at the back, a compressor squeezes it so it releases that heat into the room. This cycle repeats continuously to keep the inside cool."),
    ("What should I consider when adopting a dog?",
     "Think about how much time, space and money you can give a dog over ten or more years. Choose a breed or individual whose energy level fits your lifestyle, since a high-energy dog in a small apartment can become frustrated. Meeting the dog several times before adopting helps you see whether you are a good match."),
    ("Why is it important to stay hydrated?",
     "Water helps regulate your body temperature, cushions your joints and carries nutrients to your cells. Even mild dehydration can cause headaches, tiredness and difficulty concentrating. Most adults do well by drinking regularly through the day and paying attention to thirst, with extra water during exercise or hot weather."),
    ("How can I make a small apartment feel bigger?",
     "Use light colors on the walls and let in as much natural light as possible. Choose furniture with legs, which shows more floor, and pieces that do double duty, such as an ottoman with storage. A large mirror opposite a window reflects light and creates an impression of depth."),
    ("Explain how a bill becomes law in the United States.",
     "A member of Congress introduces a bill, and it is reviewed by a committee that can change or reject it. If both the House of Representatives and the Senate pass the same version, it goes to the President. The President can sign it into law or veto it, and Congress can override a veto with a two-thirds vote in both chambers."),
    ("Give me some tips for public speaking.",
     "Know your opening lines by heart, because a confident start calms your nerves for the rest of the talk. Speak more slowly than feels natural and pause after important points so the audience can absorb them. Practicing out loud, ideally in front of a friend, reveals awkward phrases that look fine on paper."),
    ("What is the Pythagorean theorem?",
     "The Pythagorean theorem says that in a right triangle, the square of the longest side equals the sum of the squares of the other two sides. Written as a formula, it is a squared plus b squared equals c squared. For example, a triangle with sides of 3 and 4 has a longest side of 5, because 9 plus 16 equals 25."),
    ("How do I care for a cast iron pan?",
     "After cooking, wash the pan with hot water and a little soap if needed, then dry it completely on the stove. Rub a thin layer of oil over the surface while it is still warm to protect it from rust. Avoid soaking it or putting it in the dishwasher, and it will become more nonstick with every use."),
    ("What is a good morning routine for productivity?",
     "Wake up at a consistent time and avoid checking email or social media for the first half hour. Drink a glass of water, move your body for a few minutes, and eat a simple breakfast. Then spend your first working hour on the most important task of the day, before meetings and messages take over."),
    ("Why do we dream?",
     "Scientists still do not fully agree on why we dream. One leading idea is that dreaming helps the brain process emotions and store memories from the day. Another suggests that dreams are partly a side effect of the brain's activity during sleep, which it tries to weave into a story."),
    ("How can I teach my child to ride a bike?",
     "Start by removing the pedals so your child can push along with their feet and learn to balance. Once they can glide for several seconds, put the pedals back and let them start on a gentle slope. Stay close and encouraging, and keep early sessions short so they end while it is still fun."),
]

# Multi-turn chats: (question, answer, follow-up, answer).
EN_MULTI = [
    ("I want to start journaling. How should I begin?",
     "Keep it simple at first: pick a notebook you like and write for five minutes each evening. You don't need a topic; describing one thing that happened and how you felt about it is enough. The habit matters more than the quality of the writing.",
     "What if I run out of things to write about?",
     "Use prompts when your mind goes blank, such as \"What surprised me today?\" or \"What am I looking forward to this week?\" You can also list a few small things you are grateful for. Even a few lines keep the habit alive on quiet days."),
    ("Can you recommend a beginner-friendly programming language?",
     "Python is a great first language because its syntax is clean and reads almost like English. It is used in web development, data analysis and automation, so the skills you learn stay useful. There are also many free tutorials and a large, friendly community.",
     "How long will it take me to learn the basics?",
     "With about an hour of practice a day, most people become comfortable with variables, loops, functions and simple data structures in six to eight weeks. Building a small project, like a to-do list or a budget tracker, is the best way to check what you have learned."),
    ("I'm planning a trip to Kyoto in November. What should I see?",
     "November is peak autumn color season, so visit temple gardens such as Tofuku-ji, Eikan-do and the hills around Arashiyama. Go early in the morning to avoid the crowds, and leave time to walk the old streets of Higashiyama between sights.",
     "Is it easy to get around without a car?",
     "Yes, Kyoto is very easy to explore without a car. City buses reach most major temples, the subway covers the main north-south and east-west routes, and many areas are best seen on foot. A prepaid IC card makes paying fares simple."),
    ("What's the best way to store fresh herbs?",
     "Treat soft herbs like parsley, cilantro and basil like a bouquet: trim the stems and stand them in a glass of water. Keep basil at room temperature and cover the others loosely with a bag in the fridge. Hardy herbs such as rosemary and thyme last longest wrapped in a damp paper towel in the fridge.",
     "Can I freeze them?",
     "Yes. Chop the herbs, pack them into an ice cube tray and cover them with olive oil or water before freezing. The cubes are perfect for dropping straight into soups, sauces and stews, although the herbs will be too soft to use as a garnish."),
    ("My tomato plant's leaves are turning yellow. What could be wrong?",
     "Yellow leaves near the bottom of a tomato plant are often caused by overwatering or a lack of nitrogen. Check that the soil drains well and only water when the top inch feels dry. If the soil is fine, a balanced fertilizer can help the plant recover.",
     "Should I remove the yellow leaves?",
     "Yes, pinch off leaves that are mostly yellow. This improves air flow around the base of the plant and reduces the chance of fungal disease spreading from old foliage. Avoid removing more than a few leaves at once so the plant can keep producing energy."),
    ("How do I convert Celsius to Fahrenheit?",
     "Multiply the Celsius temperature by 9, divide by 5, and then add 32. For example, 20 degrees Celsius times 9 is 180, divided by 5 is 36, and adding 32 gives 68 degrees Fahrenheit.",
     "And the other way around?",
     "Subtract 32 from the Fahrenheit temperature, multiply by 5, and divide by 9. So 68 degrees Fahrenheit minus 32 is 36, times 5 is 180, and divided by 9 gives 20 degrees Celsius."),
    ("I keep forgetting to drink water during the day. Any ideas?",
     "Keep a reusable bottle on your desk where you can see it, and refill it at set times such as after each meeting. You could also link drinking to habits you already have, like having a glass of water before every meal.",
     "Are there apps that help?",
     "Yes, many habit and hydration apps send reminders and let you log each glass. Some smart bottles even glow when it is time to drink. Try one for a couple of weeks, and stop using it once drinking regularly has become automatic."),
    ("What is a good first houseplant for someone who travels a lot?",
     "A snake plant is an excellent choice. It tolerates low light, survives weeks without water and rarely suffers from pests. A ZZ plant is another tough option with glossy leaves that stay attractive with very little care.",
     "Where should I put it?",
     "Place it somewhere with bright, indirect light, such as a few feet from a window, although both plants also cope with darker corners. Avoid spots next to heaters or air conditioners, where temperatures swing sharply."),
    ("Can you help me plan a simple weekly workout schedule?",
     "Sure. A balanced beginner week could include three days of strength training, such as Monday, Wednesday and Friday, with full-body exercises like squats, push-ups and rows. Add two days of moderate cardio, such as brisk walking or cycling, and keep the remaining two days for rest.",
     "What if I only have twenty minutes a day?",
     "Twenty minutes is enough if you keep the intensity up. Try circuits: do five exercises for forty seconds each with twenty seconds of rest, and repeat the circuit three or four times. Consistency across the week matters more than the length of any single session."),
    ("What's the difference between a latte and a cappuccino?",
     "Both drinks are made with espresso and steamed milk. A cappuccino has roughly equal parts espresso, steamed milk and milk foam, so it tastes stronger and feels lighter. A latte has much more steamed milk and only a thin layer of foam, giving it a creamier, milder flavor.",
     "Which one has more caffeine?",
     "If they are made with the same number of espresso shots, they contain the same amount of caffeine. The latte only tastes milder because the espresso is diluted in more milk."),
]

# Clean answers with typographic characters; the generator writes them as UTF-8 read as
# cp1252 (`donâ€™t`, `cafÃ©`) and expects the engine to restore these originals.
EN_MOJIBAKE = [
    ("What is the difference between a resume and a CV?",
     "A r\u00e9sum\u00e9 is a short summary of your experience, usually one or two pages, tailored to a specific job. A CV, or curriculum vitae, is a longer and more complete record of your academic and professional history. In the United States, CVs are mainly used for academic and research positions, while r\u00e9sum\u00e9s are standard for most other jobs."),
    ("Why don't my cookies spread in the oven?",
     "If your cookies don\u2019t spread, the dough may be too cold or contain too much flour. Try letting the dough rest at room temperature for ten minutes, and measure flour by spooning it into the cup rather than scooping. Using melted butter instead of softened butter also helps cookies spread more."),
    ("Recommend a cozy cafe drink for winter.",
     "Try a caf\u00e9 au lait made with strong coffee and steamed milk in equal parts \u2014 it\u2019s gentle, warm and easy to make at home. For something sweeter, add a spoonful of honey and a pinch of cinnamon."),
]

# prompt/completion rows (mixed_formats.jsonl).
EN_PROMPT_COMPLETION = [
    ("Write a short thank-you note to a neighbor who watered my plants while I was away.",
     "Dear Mrs. Carter, thank you so much for watering my plants while I was away. They look healthier than when I left them, and it was a relief to know they were in good hands. Please let me know if I can ever return the favor."),
    ("Explain what a sonnet is in two sentences.",
     "A sonnet is a poem of fourteen lines, usually written in iambic pentameter with a fixed rhyme scheme. Shakespearean sonnets end with a rhyming couplet that often delivers a twist or conclusion."),
    ("Give me a tip for remembering people's names.",
     "Repeat the name back when you are introduced, for example by saying, \"Nice to meet you, Priya.\" Using it once or twice early in the conversation helps move it from short-term to long-term memory."),
    ("Summarize the plot of Cinderella in one paragraph.",
     "Cinderella is a kind young woman mistreated by her stepmother and stepsisters. With help from her fairy godmother, she attends the royal ball and wins the prince's heart, but must flee at midnight and leaves behind a glass slipper. The prince searches the kingdom, finds that the slipper fits only Cinderella, and the two marry."),
    ("Suggest a name for a small bakery that specializes in sourdough.",
     "How about \"Rise and Crumb\"? It hints at the slow rise of sourdough and sounds warm and friendly, which suits a neighborhood bakery."),
    ("Write a one-sentence product description for a reusable water bottle.",
     "This insulated steel bottle keeps drinks cold for a full day, fits in most cup holders, and replaces hundreds of single-use plastic bottles a year."),
    ("What should I check before buying a used bicycle?",
     "Check that the frame has no cracks or dents, especially near the joints. Spin the wheels to see that they run straight, squeeze the brakes, and shift through all the gears to make sure the chain moves smoothly."),
]

# question/answer rows in English (mixed_formats.jsonl, via the column mapping).
EN_QA_COLUMNS = [
    ("What is the difference between weather and climate?",
     "Weather describes short-term conditions, like today's rain or tomorrow's heat. Climate is the average pattern of weather in a region over many years, usually thirty or more."),
    ("Why do onions make people cry?",
     "Cutting an onion breaks its cells and releases enzymes that produce an irritating gas. When the gas reaches your eyes, your tear glands respond by flushing it away, which is why your eyes water."),
    ("How long should I boil an egg for a soft yolk?",
     "Lower the egg into boiling water and cook it for about six minutes, then move it to cold water. The white will be set while the yolk stays soft and jammy."),
    ("What does a VPN actually do?",
     "A VPN creates an encrypted tunnel between your device and a server run by the VPN provider. Websites see the server's address instead of yours, and people on your local network cannot read your traffic."),
]

# Tool-call rows: get_weather for a city, answered in English or Japanese.
WEATHER_CITIES = [  # (English name, Japanese name or None)
    ("Tokyo", "東京"), ("Osaka", "大阪"), ("London", None), ("Sapporo", "札幌"), ("Seattle", None),
    ("Sydney", None), ("Kyoto", "京都"), ("Berlin", None), ("Fukuoka", "福岡"), ("Toronto", None),
    ("Nagoya", "名古屋"), ("Madrid", None), ("Sendai", "仙台"), ("Chicago", None),
]
WEATHER = {  # condition: (Japanese word, English question, English reply, Japanese reply)
    "light rain": ("小雨", "Do I need an umbrella in {city} today?",
                   "Yes, it is {t}°C with light rain in {city} right now, so take an umbrella if you are heading out.",
                   "現在の{city}は小雨で、気温は{t}度です。お出かけの際は傘を持っていくと安心です。"),
    "sunny": ("晴れ", "What's the weather like in {city} right now?",
              "It is sunny and {t}°C in {city} at the moment, a nice day to spend some time outside.",
              "{city}はいま晴れていて、気温は{t}度です。外で過ごすのにちょうどよい天気ですね。"),
    "cloudy": ("くもり", "How is the weather in {city} at the moment?",
               "It is {t}°C and cloudy in {city} right now, with no rain in the current report.",
               "{city}は現在くもりで、気温は{t}度です。今のところ雨の予報は出ていません。"),
    "snow": ("雪", "Is it cold in {city} today?",
             "It is snowing in {city} and the temperature is {t}°C, so dress warmly and allow extra time for travel.",
             "{city}では雪が降っていて、気温は{t}度です。暖かい服装で、移動には時間の余裕を持ってください。"),
}
JA_WEATHER_ASK = ["{city}の今の天気を教えてください。", "今日の{city}は傘が必要ですか。",
                  "{city}の天気はどうですか。"]

# ---------------------------------------------------------------------------------------
# Chinese arithmetic word problems: (problem, worked answer, number generator name).
# ---------------------------------------------------------------------------------------

# Names chosen so that py3langid reads every answer as zh: with 小薇, 东东, 浩浩, 小林 or 佳佳
# some short answers come out as wuu/yue (Wu, Cantonese) and would be rejected as wrong_language.
ZH_NAMES = ["小明", "小红", "小华", "小丽", "小刚", "小芳", "小军", "小雨", "乐乐", "明明", "小杰",
            "小雪", "小宇", "小强", "小敏", "小亮", "小静", "小伟"]
ZH_ITEMS = [("苹果", "个"), ("橘子", "个"), ("铅笔", "支"), ("贴纸", "张"), ("饼干", "块"),
            ("气球", "个"), ("卡片", "张"), ("弹珠", "颗"), ("糖果", "颗"), ("草莓", "颗"),
            ("积木", "块"), ("彩笔", "支"), ("画片", "张")]
ZH_ASK = ["请解答下面这道数学应用题。", "计算下面的题目，并写出简短的计算过程。", "请帮我算一算这道题。"]

ZH_TEMPLATES = [
    ("{n}有{a}{m}{item}，{n2}又送给{n}{b}{m}。{n}现在一共有多少{m}{item}？",
     "{a} 加 {b} 等于 {r}，所以{n}现在一共有 {r} {m}{item}。", "add"),
    ("{n}有{a}{m}{item}，分给同学{b}{m}以后，还剩多少{m}？",
     "{a} 减 {b} 等于 {r}，所以{n}还剩 {r} {m}{item}。", "sub"),
    ("每盒{item}有{a}{m}，{n}买了{b}盒，一共买了多少{m}{item}？",
     "{a} 乘 {b} 等于 {r}，所以{n}一共买了 {r} {m}{item}。", "mul"),
    ("{a}{m}{item}平均分给{b}个小朋友，每个小朋友能分到几{m}？",
     "{a} 除以 {b} 等于 {r}，所以每个小朋友能分到 {r} {m}{item}。", "div"),
    ("一支钢笔{a}元，一个笔记本{b}元。{n}各买了一样，一共要付多少元？",
     "{a} 加 {b} 等于 {r}，所以{n}一共要付 {r} 元。", "add"),
    ("{n}带了{a}元去超市，买零食花了{b}元，还剩多少元？",
     "{a} 减 {b} 等于 {r}，所以{n}还剩 {r} 元。", "sub"),
    ("一本故事书有{a}页，{n}每天读{b}页，几天能读完？",
     "{a} 除以 {b} 等于 {r}，所以{n}需要 {r} 天才能读完这本书。", "div_big"),
    ("公交车上原来有{a}人，到站后下去{b}人，又上来{c}人。现在车上有多少人？",
     "{a} 减 {b} 等于 {t}，{t} 加 {c} 等于 {r}，所以现在车上有 {r} 人。", "sub_add"),
    ("一块长方形菜地长{a}米，宽{b}米，这块菜地的面积是多少平方米？",
     "{a} 乘 {b} 等于 {r}，所以这块菜地的面积是 {r} 平方米。", "rect"),
    ("一个长方形花坛长{a}米，宽{b}米，这个花坛的周长是多少米？",
     "{a} 加 {b} 等于 {t}，{t} 乘 2 等于 {r}，所以这个花坛的周长是 {r} 米。", "perimeter"),
    ("{n}今年{a}岁，爸爸比{n}大{b}岁。爸爸今年多少岁？",
     "{a} 加 {b} 等于 {r}，所以爸爸今年 {r} 岁。", "age_add"),
    ("妈妈今年{a}岁，{n}今年{b}岁。妈妈比{n}大多少岁？",
     "{a} 减 {b} 等于 {r}，所以妈妈比{n}大 {r} 岁。", "age_sub"),
    ("一个班有男生{a}人，女生{b}人，这个班一共有多少名学生？",
     "{a} 加 {b} 等于 {r}，所以这个班一共有 {r} 名学生。", "class"),
    ("礼堂里每排有{a}把椅子，一共有{b}排。礼堂里一共有多少把椅子？",
     "{a} 乘 {b} 等于 {r}，所以礼堂里一共有 {r} 把椅子。", "mul_big"),
    ("一辆汽车每小时行驶{a}千米，{b}小时能行驶多少千米？",
     "{a} 乘 {b} 等于 {r}，所以这辆汽车 {b} 小时能行驶 {r} 千米。", "speed"),
    ("{n}家离学校{a}米，{n}已经走了{b}米，还要走多少米才能到学校？",
     "{a} 减 {b} 等于 {r}，所以{n}还要走 {r} 米才能到学校。", "distance"),
    ("{n}三次数学小测验的成绩分别是{a}分、{b}分和{c}分，平均成绩是多少分？",
     "{a} 加 {b} 加 {c} 等于 {t}，{t} 除以 3 等于 {r}，所以平均成绩是 {r} 分。", "average"),
    ("{n}上午{a}点开始写作业，一共写了{b}小时，{n}几点写完作业？",
     "{a} 加 {b} 等于 {r}，所以{n}上午 {r} 点写完作业。", "clock"),
    ("{n}每天跳绳{a}分钟，一个星期一共跳绳多少分钟？",
     "{a} 乘 7 等于 {r}，所以{n}一个星期一共跳绳 {r} 分钟。", "week"),
    ("有{a}个鸡蛋，每{b}个装一盒，可以装满几盒？",
     "{a} 除以 {b} 等于 {r}，所以可以装满 {r} 盒。", "eggs"),
    ("一个西瓜{a}元，{n}买了{b}个，一共花了多少元？",
     "{a} 乘 {b} 等于 {r}，所以{n}一共花了 {r} 元。", "mul"),
    ("{n}每周存{a}元零花钱，连续存了{b}周，一共存了多少元？",
     "{a} 乘 {b} 等于 {r}，所以{n}一共存了 {r} 元。", "mul"),
    ("果园里有苹果树{a}棵，梨树比苹果树少{b}棵。梨树有多少棵？",
     "{a} 减 {b} 等于 {r}，所以果园里有梨树 {r} 棵。", "sub"),
    ("{n}买了{a}支铅笔，每支{b}元，付给售货员{c}元，应该找回多少元？",
     "{a} 乘 {b} 等于 {t}，{c} 减 {t} 等于 {r}，所以应该找回 {r} 元。", "change"),
    ("图书馆有故事书{a}本，科技书的数量是故事书的{b}倍。科技书有多少本？",
     "{a} 乘 {b} 等于 {r}，所以图书馆有科技书 {r} 本。", "times"),
    ("{n}折了{a}朵纸花，{n2}折的比{n}多{b}朵。两人一共折了多少朵纸花？",
     "{a} 加 {b} 等于 {t}，{a} 加 {t} 等于 {r}，所以两人一共折了 {r} 朵纸花。", "more_total"),
    ("每层楼之间有{a}级台阶，{n}从1楼走到{b}楼，一共要走多少级台阶？",
     "从 1 楼到 {b} 楼要走 {c} 层，{a} 乘 {c} 等于 {r}，所以{n}一共要走 {r} 级台阶。", "stairs"),
    ("一桶水有{a}升，每天用去{b}升，用了{c}天以后还剩多少升？",
     "{b} 乘 {c} 等于 {t}，{a} 减 {t} 等于 {r}，所以还剩 {r} 升水。", "water"),
    ("一张火车票{a}元，{n}一家{b}口人去旅行，买票一共要多少元？",
     "{a} 乘 {b} 等于 {r}，所以{n}一家买票一共要 {r} 元。", "tickets"),
    ("盘子里有{a}块饼干，{n}吃了{b}块，{n2}吃了{c}块。盘子里还剩多少块饼干？",
     "{b} 加 {c} 等于 {t}，{a} 减 {t} 等于 {r}，所以盘子里还剩 {r} 块饼干。", "two_sub"),
]


def zh_numbers(kind: str, g) -> dict:
    """Numbers for a template kind; every answer is a whole number and every step checks."""
    ri = g.randint
    if kind == "add":
        a, b = ri(3, 40), ri(3, 40)
        return dict(a=a, b=b, r=a + b)
    if kind == "age_add":
        a, b = ri(6, 12), ri(24, 36)
        return dict(a=a, b=b, r=a + b)
    if kind == "class":
        a, b = ri(14, 26), ri(14, 26)
        return dict(a=a, b=b, r=a + b)
    if kind == "sub":
        a = ri(20, 90)
        b = ri(3, a - 5)
        return dict(a=a, b=b, r=a - b)
    if kind == "age_sub":
        a, b = ri(30, 42), ri(5, 12)
        return dict(a=a, b=b, r=a - b)
    if kind == "distance":
        a = ri(6, 19) * 50
        b = ri(2, a // 10 - 3) * 10
        return dict(a=a, b=b, r=a - b)
    factors = {"mul": ((3, 15), (2, 9)), "mul_big": ((12, 30), (8, 20)), "rect": ((8, 25), (3, 7)),
               "speed": ((8, 18), (2, 6)), "times": ((20, 90), (2, 5)), "tickets": ((45, 260), (3, 5))}
    if kind in factors:
        (a_lo, a_hi), (b_lo, b_hi) = factors[kind]
        a, b = ri(a_lo, a_hi) * (5 if kind == "speed" else 1), ri(b_lo, b_hi)
        return dict(a=a, b=b, r=a * b)
    if kind in ("div", "div_big", "eggs"):
        if kind == "eggs":
            b, r = g.choice([6, 10, 12]), ri(2, 9)
        else:
            (b_lo, b_hi), (r_lo, r_hi) = ((2, 8), (2, 9)) if kind == "div" else ((8, 20), (4, 12))
            b, r = ri(b_lo, b_hi), ri(r_lo, r_hi)
        return dict(a=b * r, b=b, r=r)
    if kind == "sub_add":
        a = ri(20, 45)
        b, c = ri(3, a - 8), ri(2, 15)
        return dict(a=a, b=b, c=c, t=a - b, r=a - b + c)
    if kind == "perimeter":
        a, b = ri(6, 20), ri(3, 5)
        return dict(a=a, b=b, t=a + b, r=2 * (a + b))
    if kind == "average":
        r = ri(78, 94)
        a, b = r + ri(1, 5), r - ri(1, 6)
        return dict(a=a, b=b, c=3 * r - a - b, t=3 * r, r=r)
    if kind == "clock":
        a, b = ri(8, 9), ri(1, 2)
        return dict(a=a, b=b, r=a + b)
    if kind == "week":
        a = ri(10, 30)
        return dict(a=a, r=7 * a)
    if kind == "change":
        a, b = ri(2, 6), ri(1, 4)
        c = 20 if a * b < 20 else 50
        return dict(a=a, b=b, c=c, t=a * b, r=c - a * b)
    if kind == "more_total":
        a, b = ri(5, 20), ri(2, 9)
        return dict(a=a, b=b, t=a + b, r=2 * a + b)
    if kind == "stairs":
        a, b = ri(14, 22), ri(3, 7)
        return dict(a=a, b=b, c=b - 1, r=a * (b - 1))
    if kind == "water":
        b, c = ri(3, 8), ri(2, 5)
        a = b * c + ri(4, 30)
        return dict(a=a, b=b, c=c, t=b * c, r=a - b * c)
    if kind == "two_sub":
        b, c = ri(2, 6), ri(2, 6)
        a = b + c + ri(3, 15)
        return dict(a=a, b=b, c=c, t=b + c, r=a - b - c)
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------
# Fixed texts of planted defects.
# ---------------------------------------------------------------------------------------

# wrong_language: fluent replies in a language the demo config does not accept.
WRONG_LANGUAGE = {
    "ko": "육아휴직을 마치고 회사로 돌아가는 부모를 위한 이야기입니다. 작은 준비부터 차근차근 시작해 보세요.",
    "de": ("What are some tips for saving money on groceries?",
           "Schreiben Sie vor dem Einkauf eine Liste und halten Sie sich daran. Kaufen Sie saisonales Obst und Gemüse, denn es ist meist günstiger und frischer. Vergleichen Sie außerdem die Preise pro Kilogramm statt pro Packung."),
    "fr": ("How do I make a good cup of tea?",
           "Faites chauffer l'eau juste avant l'ébullition pour le thé vert, ou jusqu'à ébullition pour le thé noir. Laissez infuser trois à cinq minutes, puis retirez les feuilles pour éviter l'amertume."),
    "es": ("小明有3个苹果，妈妈又给了他5个。小明现在一共有多少个苹果？",
           "Primero sumamos 3 y 5, lo que da 8. Por lo tanto, Xiao Ming tiene ahora 8 manzanas en total."),
}

# tag_list in English: (blog excerpt, keyword reply).
EN_TAG_ROWS = [
    ("After years of spreadsheets, I finally moved my data analysis to Python. Loading a CSV and plotting it took ten lines of code, and I will never go back.",
     "python, pandas, numpy, matplotlib"),
    ("We spent five days in Kyoto in late November, walking from temple to temple under red maples and stopping at tiny cafes along the way.",
     "#travel #kyoto #autumn #cafes"),
    ("This year I paid off my credit card, opened an index fund and started a small online shop on the side. Here is what worked for me.",
     "budgeting | saving | investing | side hustle"),
    ("My new weekly routine mixes two short runs, one long bike ride and a swim on Sunday morning. Here is how I fit it all around a full-time job.",
     "Running, Cycling, Swimming, Triathlon"),
]
EN_TAG_ASK = "Suggest a title for this blog post:"

EN_DEFECTS = {
    "empty": "What are the main causes of traffic congestion?",
    "two_users": ("I have a question about my bike.", "How do I fix a squeaky chain?",
                  "Clean the chain with a rag and a little degreaser, let it dry, and then apply a drop of chain lubricant to each link while turning the pedals backward. Wipe off the excess so the chain does not attract dirt."),
    "no_reply": ("How do I back up my phone?",
                 "On most phones you can turn on automatic cloud backup in the settings, which saves your photos, contacts and app data whenever you are connected to Wi-Fi and charging. You can also copy everything to a computer with a cable for an extra local copy.",
                 "How often should I do a manual backup?"),
    "eos": ("How do I keep bananas fresh longer?",
            "Separate the bananas and wrap the stems in plastic wrap to slow ripening. Keep them away from other fruit, and once they are ripe, move them to the fridge; the peel will darken but the fruit inside stays firm for several more days.</s>"),
    "inst": ("[INST] What is a mortgage? [/INST]",
             "A mortgage is a loan used to buy a home, with the home itself serving as security for the lender. You repay it in monthly installments over many years, usually fifteen to thirty, and each payment covers part of the loan plus interest."),
    "the_the": ("What is the fastest way to learn to touch type?",
                "Practice a little every day with a typing tutor, and the the the most important rule is to never look at the keyboard. Accuracy comes first; speed follows once your fingers know where the keys are."),
    "bangs": ("Any advice for staying focused while studying at home?",
              "Put your phone in another room, work in fifty-minute blocks with short breaks, and keep a notepad nearby to jot down distractions for later. Hope this helps!!!!!!!"),
    "short": ("Is it safe to eat raw cookie dough?", "No."),
    "long_ask": "Below are my notes from this month's reading. Please condense them into a single paragraph.",
    "long_reply": "This month's notes cover practical habits for health, money, cooking and work, and their common thread is that small, consistent routines beat big one-off efforts.",
    "unknown": {"prompt": "List three primary colors.", "response": "Red, yellow and blue are the traditional primary colors in painting."},
}

JA_DEFECTS = {
    "long_ask": "以下は今月公開した記事の要約です。全体をまとめる特集タイトルを一つ考えてください。",
    "long_reply": "今月の人気記事をふり返る、暮らしと仕事を少し楽にするヒント集",
    "thanks": "ありがとう" * 4,  # phrases up to 8 tokens count; ありがとうございます (10) would not
}

MIXED_DEFECTS = {
    "bot": [{"role": "user", "content": "Can you recommend a podcast about history?"},
            {"role": "bot", "content": "Try a long-running narrative history show that covers one period per season; listening in order makes the story easy to follow."}],
    "no_reply": [{"role": "user", "content": "Can you suggest a board game for four players?"},
                 {"role": "assistant", "content": "Ticket to Ride is a great choice for four players: it is easy to learn, games take about an hour, and it stays tense until the end."},
                 {"role": "user", "content": "Is it okay for kids?"}],
    "empty": {"prompt": "Write a two-line poem about coffee.", "completion": ""},
    "unknown": {"q": "What is the boiling point of water?", "a": "At sea level, water boils at 100 degrees Celsius."},
    "malformed": "{'prompt': 'Name a fruit that is high in vitamin C.', 'completion': 'Oranges are famous for it, but kiwis and strawberries contain even more per serving.'}",
}
